//! Input limits for tickets and comments (all from config); errors name every offending field.

use serde::Serialize;

use crate::config::TicketSettings;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fields: {}", .fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
pub struct ValidationError {
    pub fields: Vec<FieldError>,
}

/// True when `text` holds no control character but newline and tab.
pub fn is_clean(text: &str) -> bool {
    !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
}

/// Collects field errors, then turns them into one [`ValidationError`].
#[derive(Debug, Default)]
pub struct Checker {
    fields: Vec<FieldError>,
}

impl Checker {
    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.fields.push(FieldError {
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// Non-blank text of at most `max` characters, without control characters (newline and tab
    /// excepted): a NUL, say, is refused here rather than by Django's database later.
    pub fn text(&mut self, field: &str, value: &str, max: usize, required: bool) {
        if required && value.trim().is_empty() {
            self.fail(field, "must not be empty");
        } else if value.chars().count() > max {
            self.fail(field, format!("must be at most {max} characters"));
        } else if !is_clean(value) {
            self.fail(
                field,
                "must not contain control characters (newline and tab are allowed)",
            );
        }
    }

    pub fn tags(&mut self, value: &[String], limits: &TicketSettings) {
        if value.len() > limits.max_tags {
            self.fail("tags", format!("at most {} tags", limits.max_tags));
        }
        for (i, tag) in value.iter().enumerate() {
            if tag.trim().is_empty() || tag.chars().count() > limits.max_tag_chars || !is_clean(tag)
            {
                self.fail(
                    &format!("tags[{i}]"),
                    format!(
                        "must be 1 to {} characters, without control characters",
                        limits.max_tag_chars
                    ),
                );
            }
        }
        let mut sorted: Vec<&String> = value.iter().collect();
        sorted.sort();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            self.fail("tags", "must not repeat a tag");
        }
    }

    pub fn finish(self) -> Result<(), ValidationError> {
        if self.fields.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                fields: self.fields,
            })
        }
    }
}
