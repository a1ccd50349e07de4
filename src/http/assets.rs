//! The browser side of live chat, served by the chat listener (the one port customers and agents
//! reach): the customer widget (`/widget.js`), the JS client it loads (`/switchboard.js`), the agent
//! console (`/console/`) and a demo page (`/demo/`). The files live in `assets/` and are embedded in
//! the binary (`rust-embed`), so a release needs no build step and no file beside it.
//!
//! At start each file is read once: text files get the bundle's version (a hash of every file)
//! written over the `__SB_VERSION__` marker, so a page can name its scripts under `/v/<version>/…`,
//! which are cached for a year (`immutable`); the plain names are revalidated (`no-cache`, answered
//! 304 on a matching `ETag`). Text files are gzipped once, here, and sent gzipped to clients that
//! accept it. A cross-origin request (the widget's module imports from a shop's page) is answered
//! with `Access-Control-Allow-Origin` when `sessions.allowed_origins` allows its origin (any origin
//! when the list is empty): the list that decides which sites may open a chat also decides which
//! may embed the widget. The console and the demo page carry a strict Content-Security-Policy.
//!
//! Pure: [`Assets::respond`] turns a request head into a whole HTTP response; the listener writes it.

use std::collections::HashMap;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use rust_embed::RustEmbed;
use sha1::{Digest, Sha1};

#[derive(RustEmbed)]
#[folder = "assets/"]
#[exclude = "test/*"]
#[exclude = "*.md"]
#[exclude = "*/*.md"]
struct Files;

/// Written over in text files with the bundle's version.
const VERSION_MARKER: &str = "__SB_VERSION__";

/// The policy of the pages served here: their own scripts, styles and sockets, nothing else.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// Bodies under this many bytes are not worth compressing.
const GZIP_MIN: usize = 512;

struct Asset {
    body: Vec<u8>,
    gzip: Option<Vec<u8>>,
    etag: String,
    content_type: &'static str,
}

/// A request for an asset, from its head.
#[derive(Debug, Clone, Copy)]
pub struct AssetRequest<'a> {
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    pub origin: Option<&'a str>,
    pub accept_encoding: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
}

/// Every embedded file, ready to send.
pub struct Assets {
    files: HashMap<String, Asset>,
    version: String,
    allowed_origins: Vec<String>,
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 3), Compression::best());
    enc.write_all(body).ok()?;
    enc.finish().ok()
}

impl Assets {
    /// Reads, stamps and compresses every embedded file; `allowed_origins` is
    /// `sessions.allowed_origins`.
    pub fn load(allowed_origins: Vec<String>) -> Self {
        let mut names: Vec<String> = Files::iter().map(|n| n.into_owned()).collect();
        names.sort();
        let mut bundle = Sha1::new();
        let mut raw = Vec::new();
        for name in names {
            let Some(file) = Files::get(&name) else {
                continue;
            };
            bundle.update(name.as_bytes());
            bundle.update(&file.data);
            raw.push((name, file.data.into_owned()));
        }
        let version = hex(&bundle.finalize()[..6]);
        let files = raw
            .into_iter()
            .map(|(name, data)| {
                let content_type = content_type(&name);
                let body = if content_type.starts_with("text/") {
                    String::from_utf8(data)
                        .map(|t| t.replace(VERSION_MARKER, &version).into_bytes())
                        .unwrap_or_else(|e| e.into_bytes())
                } else {
                    data
                };
                let etag = format!("\"{}\"", hex(&Sha1::digest(&body)[..8]));
                let gzip = (content_type.starts_with("text/") && body.len() >= GZIP_MIN)
                    .then(|| gzip(&body))
                    .flatten();
                let asset = Asset {
                    body,
                    gzip,
                    etag,
                    content_type,
                };
                (name, asset)
            })
            .collect();
        Self {
            files,
            version,
            allowed_origins,
        }
    }

    /// The bundle's version, as in `/v/<version>/…`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The embedded file a path names, whether the name is versioned, or a redirect to add the
    /// directory's slash; `None`: not an asset path.
    fn resolve(&self, path: &str) -> Option<Resolved> {
        let (versioned, rest) = match path.strip_prefix("/v/") {
            Some(rest) => {
                let (version, file) = rest.split_once('/')?;
                (version == self.version, file)
            }
            None => (false, path.trim_start_matches('/')),
        };
        let name = match rest {
            "console" | "demo" => return Some(Resolved::Slash),
            "console/" | "demo/" => format!("{rest}index.html"),
            other => other.to_string(),
        };
        if name.is_empty() || name.contains("..") {
            return None;
        }
        self.files
            .contains_key(&name)
            .then_some(Resolved::File { name, versioned })
    }

    /// The whole HTTP response for `req`, or `None` when the path is not an asset's.
    pub fn respond(&self, req: AssetRequest<'_>) -> Option<Vec<u8>> {
        let resolved = self.resolve(req.path)?;
        if req.method != "GET" && req.method != "HEAD" {
            let body = r#"{"error":{"code":"method_not_allowed","message":"use GET or HEAD"}}"#;
            return Some(response(
                "405 Method Not Allowed",
                &[("Content-Type", "application/json"), ("Allow", "GET, HEAD")],
                body.as_bytes(),
                true,
            ));
        }
        let (name, versioned) = match resolved {
            Resolved::Slash => {
                let location = format!("{}/", req.path);
                return Some(response(
                    "301 Moved Permanently",
                    &[("Location", &location)],
                    b"",
                    true,
                ));
            }
            Resolved::File { name, versioned } => (name, versioned),
        };
        let asset = self.files.get(&name)?;
        let cache = if versioned {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        let mut headers: Vec<(&str, &str)> = vec![
            ("Content-Type", asset.content_type),
            ("ETag", &asset.etag),
            ("Cache-Control", cache),
            ("Vary", "Accept-Encoding, Origin"),
            ("X-Content-Type-Options", "nosniff"),
        ];
        if asset.content_type.starts_with("text/html") {
            headers.push(("Content-Security-Policy", PAGE_CSP));
            headers.push(("Referrer-Policy", "no-referrer"));
        }
        let allow_origin = req.origin.filter(|o| {
            self.allowed_origins.is_empty() || self.allowed_origins.iter().any(|a| a == o)
        });
        if let Some(origin) = allow_origin {
            headers.push(("Access-Control-Allow-Origin", origin));
        }
        let fresh = req.if_none_match.is_some_and(|tags| {
            tags.split(',')
                .any(|t| t.trim() == asset.etag || t.trim() == "*")
        });
        if fresh {
            return Some(response("304 Not Modified", &headers, b"", true));
        }
        let gzip_ok = req.accept_encoding.is_some_and(accepts_gzip);
        let body = match (&asset.gzip, gzip_ok) {
            (Some(gz), true) => {
                headers.push(("Content-Encoding", "gzip"));
                gz.as_slice()
            }
            _ => asset.body.as_slice(),
        };
        let with_body = req.method == "GET";
        Some(response("200 OK", &headers, body, with_body))
    }
}

enum Resolved {
    File { name: String, versioned: bool },
    Slash,
}

/// Whether an `Accept-Encoding` takes gzip (and does not refuse it with `q=0`).
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|part| {
        let mut it = part.split(';');
        let coding = it.next().unwrap_or("").trim();
        let refused = it.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

/// A whole HTTP/1.1 response that closes the connection; `Content-Length` is the body's even when
/// it is left out (HEAD, 304).
fn response(status: &str, headers: &[(&str, &str)], body: &[u8], with_body: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !status.starts_with("304") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut out = out.into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(path: &'a str) -> AssetRequest<'a> {
        AssetRequest {
            method: "GET",
            path,
            origin: None,
            accept_encoding: None,
            if_none_match: None,
        }
    }

    fn head_of(resp: &[u8]) -> String {
        let text = String::from_utf8_lossy(resp);
        text.split("\r\n\r\n").next().unwrap_or("").to_string()
    }

    fn header(resp: &[u8], name: &str) -> Option<String> {
        head_of(resp).lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            k.eq_ignore_ascii_case(name).then(|| v.to_string())
        })
    }

    fn with_file(name: &str, body: &str) -> Assets {
        let mut a = Assets::load(Vec::new());
        a.files.insert(
            name.to_string(),
            Asset {
                body: body.as_bytes().to_vec(),
                gzip: gzip(body.as_bytes()),
                etag: "\"abc\"".into(),
                content_type: content_type(name),
            },
        );
        a
    }

    #[test]
    fn a_file_is_served_with_its_type_etag_and_revalidation() {
        let a = with_file("widget.js", &"x".repeat(1000));
        let resp = a.respond(get("/widget.js")).unwrap();
        assert!(head_of(&resp).starts_with("HTTP/1.1 200 OK"));
        assert_eq!(
            header(&resp, "Content-Type").as_deref(),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(header(&resp, "ETag").as_deref(), Some("\"abc\""));
        assert_eq!(header(&resp, "Cache-Control").as_deref(), Some("no-cache"));
        assert_eq!(header(&resp, "Content-Length").as_deref(), Some("1000"));
        let again = a
            .respond(AssetRequest {
                if_none_match: Some("\"abc\""),
                ..get("/widget.js")
            })
            .unwrap();
        assert!(head_of(&again).starts_with("HTTP/1.1 304"));
        assert!(a.respond(get("/nope.js")).is_none());
        assert!(a.respond(get("/../Cargo.toml")).is_none());
    }

    #[test]
    fn gzip_is_sent_to_those_who_accept_it_and_versioned_names_are_immutable() {
        let a = with_file("switchboard.js", &"const a = 1;\n".repeat(200));
        let path = format!("/v/{}/switchboard.js", a.version());
        let resp = a
            .respond(AssetRequest {
                accept_encoding: Some("br, gzip;q=0.8"),
                ..get(&path)
            })
            .unwrap();
        assert_eq!(header(&resp, "Content-Encoding").as_deref(), Some("gzip"));
        assert!(header(&resp, "Cache-Control")
            .unwrap()
            .contains("immutable"));
        let len: usize = header(&resp, "Content-Length").unwrap().parse().unwrap();
        assert!(len < 200 * 13 / 4, "compressed: {len}");
        let refused = a
            .respond(AssetRequest {
                accept_encoding: Some("gzip;q=0"),
                ..get("/switchboard.js")
            })
            .unwrap();
        assert_eq!(header(&refused, "Content-Encoding"), None);
        // A stale version is still served, but not cached for good.
        let stale = a.respond(get("/v/000000000000/switchboard.js")).unwrap();
        assert_eq!(header(&stale, "Cache-Control").as_deref(), Some("no-cache"));
    }

    #[test]
    fn allowed_origins_decide_which_sites_may_load_the_widget_and_pages_carry_a_csp() {
        let mut a = with_file("switchboard.js", "export {};");
        a.allowed_origins = vec!["https://shop.example.com".into()];
        let from = |origin| {
            a.respond(AssetRequest {
                origin: Some(origin),
                ..get("/switchboard.js")
            })
            .unwrap()
        };
        assert_eq!(
            header(
                &from("https://shop.example.com"),
                "Access-Control-Allow-Origin"
            )
            .as_deref(),
            Some("https://shop.example.com")
        );
        assert_eq!(
            header(
                &from("https://evil.example.com"),
                "Access-Control-Allow-Origin"
            ),
            None
        );
        let a = with_file("console/index.html", "<!doctype html>");
        let redirect = a.respond(get("/console")).unwrap();
        assert!(head_of(&redirect).starts_with("HTTP/1.1 301"));
        assert_eq!(header(&redirect, "Location").as_deref(), Some("/console/"));
        let page = a.respond(get("/console/")).unwrap();
        assert!(header(&page, "Content-Security-Policy")
            .unwrap()
            .contains("script-src 'self'"));
        let head = a
            .respond(AssetRequest {
                method: "HEAD",
                ..get("/console/")
            })
            .unwrap();
        assert!(String::from_utf8_lossy(&head).ends_with("\r\n\r\n"));
        let post = a
            .respond(AssetRequest {
                method: "POST",
                ..get("/console/")
            })
            .unwrap();
        assert!(head_of(&post).starts_with("HTTP/1.1 405"));
    }
}
