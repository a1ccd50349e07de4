//! `If-Match` and `If-None-Match` as RFC 9110 (§13.1.1, §13.1.2) reads them, against a ticket's
//! version, whose entity tag is the strong `"<version>"`.
//!
//! `If-Match` uses the strong comparison: a weak tag (`W/"3"`) never matches, and a list matches if
//! any of its tags does. `If-None-Match` uses the weak comparison. A header that is not `*` or a
//! list of entity tags is an error (the caller answers 400), not a failed precondition.

/// What an `If-Match` demands of the current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionMatch {
    /// No header, or `*`: any version.
    Any,
    /// One of these versions (the list's strong tags that name a version; may be empty, which
    /// nothing matches).
    OneOf(Vec<u64>),
}

impl VersionMatch {
    pub fn admits(&self, version: u64) -> bool {
        match self {
            Self::Any => true,
            Self::OneOf(versions) => versions.contains(&version),
        }
    }
}

/// The header is not `*` or a comma-separated list of entity tags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not `*` or a list of entity tags such as \"3\"")]
pub struct BadTags(pub String);

/// One entity tag of a list: weak or not, and its opaque value.
fn tags(header: &str) -> Result<Vec<(bool, &str)>, BadTags> {
    let bad = || BadTags(header.to_string());
    let mut out = Vec::new();
    for part in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (weak, rest) = match part.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, part),
        };
        let opaque = rest
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .filter(|o| !o.contains('"'))
            .ok_or_else(bad)?;
        out.push((weak, opaque));
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Reads an `If-Match` header (absent: [`VersionMatch::Any`]).
pub fn if_match(header: Option<&str>) -> Result<VersionMatch, BadTags> {
    let Some(header) = header.map(str::trim) else {
        return Ok(VersionMatch::Any);
    };
    if header == "*" {
        return Ok(VersionMatch::Any);
    }
    Ok(VersionMatch::OneOf(
        tags(header)?
            .into_iter()
            .filter(|(weak, _)| !weak)
            .filter_map(|(_, opaque)| opaque.parse().ok())
            .collect(),
    ))
}

/// Does an `If-None-Match` header name `version` (weak comparison; `*` names any)? Garbage is an
/// error.
pub fn none_match_names(header: &str, version: u64) -> Result<bool, BadTags> {
    let header = header.trim();
    if header == "*" {
        return Ok(true);
    }
    Ok(tags(header)?
        .into_iter()
        .any(|(_, opaque)| opaque.parse() == Ok(version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_is_strong_and_any_tag_of_a_list_matches() {
        assert_eq!(if_match(None), Ok(VersionMatch::Any));
        assert_eq!(if_match(Some("*")), Ok(VersionMatch::Any));
        assert!(if_match(Some("\"3\"")).unwrap().admits(3));
        assert!(
            !if_match(Some("W/\"3\"")).unwrap().admits(3),
            "weak never matches"
        );
        let list = if_match(Some("\"1\", W/\"2\", \"4\"")).unwrap();
        assert!(list.admits(1) && list.admits(4) && !list.admits(2));
        assert!(!if_match(Some("\"abc\"")).unwrap().admits(0));
    }

    #[test]
    fn garbage_is_an_error_not_a_mismatch() {
        for bad in ["3", "\"3", "W/3", ",", "\"a\"b\""] {
            assert!(if_match(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn if_none_match_compares_weakly() {
        assert_eq!(none_match_names("W/\"3\"", 3), Ok(true));
        assert_eq!(none_match_names("\"1\", \"3\"", 3), Ok(true));
        assert_eq!(none_match_names("\"2\"", 3), Ok(false));
        assert_eq!(none_match_names("*", 3), Ok(true));
        assert!(none_match_names("nope", 3).is_err());
    }
}
