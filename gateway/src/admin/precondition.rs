//! `If-Match` and entity tags (RFC 9110 §8.8.3, §13.1.1): every admin write names the revision
//! it was made from, so that no update is lost.
//!
//! An object's entity tag is its KV revision as a strong tag (`"7"`). `If-Match: *` matches any
//! current representation; a list of tags matches when one of them is, by strong comparison,
//! the current tag, so a weak tag (`W/"7"`) never matches. A condition that is false (including
//! any condition on an object that does not exist, and a field value that is not a valid list of
//! tags, which names no tag) is 412; only a missing `If-Match` is 428.

use axum::http::{header, HeaderMap, HeaderValue};

use crate::error::{ErrorKind, GatewayError};

/// The entity tag of a revision.
pub fn etag(revision: u64) -> HeaderValue {
    // Digits between quotes are always a valid header value.
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// What an `If-Match` field asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: any current representation.
    Any,
    /// A list of entity tags (empty when the field value is not a valid list).
    Tags(Vec<Tag>),
}

/// One entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// `W/` was given.
    pub weak: bool,
    /// The opaque tag, without its quotes.
    pub opaque: String,
}

impl IfMatch {
    /// The `If-Match` of a request: 428 when it has none. Several field lines are one list.
    pub fn from_headers(headers: &HeaderMap) -> Result<IfMatch, GatewayError> {
        let mut lines = headers.get_all(header::IF_MATCH).iter().peekable();
        if lines.peek().is_none() {
            return Err(ErrorKind::PreconditionRequired.into());
        }
        let mut joined = String::new();
        for line in lines {
            // A value that is not visible ASCII names no valid tag; it still is a condition.
            let Ok(text) = line.to_str() else {
                return Ok(IfMatch::Tags(Vec::new()));
            };
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(text);
        }
        Ok(IfMatch::parse(&joined))
    }

    /// Parses a field value; anything that is not `*` or a list of entity tags names no tag.
    pub fn parse(value: &str) -> IfMatch {
        if value.trim() == "*" {
            return IfMatch::Any;
        }
        IfMatch::Tags(parse_tags(value).unwrap_or_default())
    }

    /// Evaluates the condition against the object's current revision (`None`: no object):
    /// the revision it matched, or 412.
    pub fn check(&self, current: Option<u64>) -> Result<u64, GatewayError> {
        let failed = || GatewayError::from(ErrorKind::PreconditionFailed { current });
        let revision = current.ok_or_else(failed)?;
        let matched = match self {
            IfMatch::Any => true,
            IfMatch::Tags(tags) => {
                let wanted = revision.to_string();
                tags.iter().any(|t| !t.weak && t.opaque == wanted)
            }
        };
        if matched {
            Ok(revision)
        } else {
            Err(failed())
        }
    }
}

/// `#entity-tag`: a comma-separated list, empty elements allowed (RFC 9110 §5.6.1).
fn parse_tags(value: &str) -> Option<Vec<Tag>> {
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Some(tags);
        }
        let (weak, after) = match rest.strip_prefix("W/") {
            Some(after) => (true, after),
            None => (false, rest),
        };
        let body = after.strip_prefix('"')?;
        let end = body.find('"')?;
        let opaque = &body[..end];
        // etagc = %x21 / %x23-7E / obs-text; obs-text is not accepted here.
        if !opaque
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b))
        {
            return None;
        }
        tags.push(Tag {
            weak,
            opaque: opaque.to_owned(),
        });
        rest = body[end + 1..].trim_start_matches([' ', '\t']);
        if !(rest.is_empty() || rest.starts_with(',')) {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(value: Option<&str>, current: Option<u64>) -> u16 {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert(header::IF_MATCH, HeaderValue::from_str(v).expect("value"));
        }
        match IfMatch::from_headers(&headers).and_then(|c| c.check(current)) {
            Ok(_) => 200,
            Err(e) => e.classify().0.as_u16(),
        }
    }

    #[test]
    fn the_if_match_matrix() {
        let cases = [
            (None, Some(7), 428),
            (None, None, 428),
            (Some("*"), Some(7), 200),
            (Some(" * "), Some(7), 200),
            (Some("*"), None, 412),
            (Some("\"7\""), Some(7), 200),
            (Some("\"7\""), None, 412),
            (Some("\"6\""), Some(7), 412),
            (Some("\"stale\""), Some(7), 412),
            (Some("W/\"7\""), Some(7), 412),
            (Some("\"5\", \"7\""), Some(7), 200),
            (Some("W/\"7\", \"7\""), Some(7), 200),
            (Some("\"5\",,\"6\""), Some(7), 412),
            (Some("7"), Some(7), 412),
            (Some("stale"), Some(7), 412),
            (Some("\"7"), Some(7), 412),
            (Some("\"7\"x"), Some(7), 412),
            (Some("\"7\" \"7\""), Some(7), 412),
            (Some(""), Some(7), 412),
            (Some("*, \"7\""), Some(7), 412),
        ];
        for (value, current, expected) in cases {
            assert_eq!(
                status(value, current),
                expected,
                "If-Match {value:?} on {current:?}"
            );
        }
    }

    #[test]
    fn several_field_lines_are_one_list() {
        let mut headers = HeaderMap::new();
        headers.append(header::IF_MATCH, HeaderValue::from_static("\"1\""));
        headers.append(header::IF_MATCH, HeaderValue::from_static("\"2\""));
        let condition = IfMatch::from_headers(&headers).expect("present");
        assert_eq!(condition.check(Some(2)).expect("matches"), 2);
    }

    #[test]
    fn the_etag_is_the_revision_as_a_strong_tag() {
        assert_eq!(etag(42), "\"42\"");
        assert_eq!(IfMatch::parse("\"42\"").check(Some(42)).expect("match"), 42);
    }
}
