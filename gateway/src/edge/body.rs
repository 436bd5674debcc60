//! Reading a request's body: the declared content type, the size limit (a larger body is
//! drained a little so the client sees the 413), the time limit (a body still trickling in
//! after it is a 408), and the fields a POST may carry.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::{header, request::Parts};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{ErrorKind, GatewayError};

/// How much of an oversized body is read and thrown away so that the client, still sending,
/// receives the 413 instead of a broken pipe. Past this the connection is simply closed.
const DRAIN_AT_MOST: usize = 1024 * 1024;
/// How long that draining may take.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads a request body up to `limit` bytes, refusing declared non-JSON content and a body
/// that has not arrived whole `within` (hyper has no body timeout of its own). A body already
/// in hand (the usual small POST, read with its head) never arms the timer.
pub async fn read_body(
    parts: &Parts,
    body: Body,
    limit: usize,
    within: std::time::Duration,
) -> Result<Bytes, GatewayError> {
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or("");
        let essence = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ErrorKind::UnsupportedMediaType(text.to_owned()).into());
        }
    }
    tokio::time::timeout(within, read_limited(parts, body, limit))
        .await
        .unwrap_or_else(|_| Err(ErrorKind::BodyTimeout(within).into()))
}

async fn read_limited(parts: &Parts, mut body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        drain(body).await;
        return Err(ErrorKind::PayloadTooLarge { limit }.into());
    }
    let mut buf = bytes::BytesMut::with_capacity(declared.map_or(256, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ErrorKind::BodyRead(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(body).await;
                return Err(ErrorKind::PayloadTooLarge { limit }.into());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and discards what is left of a body, bounded by [`DRAIN_AT_MOST`] and [`DRAIN_WITHIN`].
async fn drain(body: Body) {
    let discard = async {
        let mut body = body;
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_AT_MOST {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_WITHIN, discard).await;
}

#[derive(Deserialize)]
struct OrderBody<'a> {
    #[serde(borrow, default)]
    order_id: Option<&'a RawValue>,
    #[serde(default)]
    callback_url: Option<String>,
}

/// What a POST body may say.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BodyFields {
    /// The `order_id`, as text.
    pub order_id: Option<String>,
    /// The `callback_url`, not yet checked.
    pub callback_url: Option<String>,
}

/// Reads a JSON body's fields: the `order_id` (a string, or a non-negative integer taken as
/// its digits) and the `callback_url`. `required` says whether the body must carry an
/// `order_id` (it need not when the path does).
pub fn body_fields(bytes: &[u8], required: bool) -> Result<BodyFields, GatewayError> {
    let missing = |callback_url| {
        if required {
            Err(GatewayError::from(ErrorKind::MissingOrderId))
        } else {
            Ok(BodyFields {
                order_id: None,
                callback_url,
            })
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return missing(None);
    }
    let classify = |e: serde_json::Error| match e.classify() {
        serde_json::error::Category::Data => ErrorKind::InvalidBody(e.to_string()),
        _ => ErrorKind::MalformedJson(e.to_string()),
    };
    // serde would read a struct from an array too; the body must be an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(classify)?;
        return Err(ErrorKind::InvalidBody("the body must be a JSON object".into()).into());
    }
    let parsed: OrderBody<'_> = serde_json::from_slice(bytes).map_err(classify)?;
    let callback_url = parsed.callback_url;
    let Some(raw) = parsed.order_id.filter(|raw| raw.get() != "null") else {
        return missing(callback_url);
    };
    let order_id = if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(raw.get()) {
        text.into_owned()
    } else if let Ok(number) = serde_json::from_str::<u64>(raw.get()) {
        number.to_string()
    } else {
        return Err(ErrorKind::InvalidBody("order_id must be a string".into()).into());
    };
    Ok(BodyFields {
        order_id: Some(order_id),
        callback_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_come_from_strings_and_integers() {
        let id = |body: &[u8], required| body_fields(body, required).expect("ok").order_id;
        assert_eq!(id(br#"{"order_id":"A1"}"#, true), Some("A1".into()));
        assert_eq!(
            id(br#"{"order_id":12345,"x":[1]}"#, true),
            Some("12345".into())
        );
        assert_eq!(id(br#"{"order_id":"a\u0041"}"#, true), Some("aA".into()));
        assert_eq!(id(b"  ", false), None);
        assert_eq!(id(b"{}", false), None);
        let fields = body_fields(
            br#"{"order_id":"A1","callback_url":"https://x.test/h"}"#,
            true,
        )
        .expect("ok");
        assert_eq!(fields.callback_url.as_deref(), Some("https://x.test/h"));
        assert!(body_fields(br#"{"order_id":"A1","callback_url":5}"#, true).is_err());
    }

    #[test]
    fn bad_bodies_are_classified() {
        let kind = |body: &[u8]| body_fields(body, true).expect_err("refused").kind;
        assert!(matches!(
            kind(b"{\"order_id\":"),
            ErrorKind::MalformedJson(_)
        ));
        assert!(matches!(kind(b"not json"), ErrorKind::MalformedJson(_)));
        assert!(matches!(kind(b"[1,2]"), ErrorKind::InvalidBody(_)));
        assert!(matches!(kind(b"\"A1\""), ErrorKind::InvalidBody(_)));
        assert!(matches!(kind(b"[1,"), ErrorKind::MalformedJson(_)));
        assert!(matches!(
            kind(br#"{"order_id":{"a":1}}"#),
            ErrorKind::InvalidBody(_)
        ));
        assert!(matches!(
            kind(br#"{"order_id":-1}"#),
            ErrorKind::InvalidBody(_)
        ));
        assert!(matches!(
            kind(br#"{"order_id":null}"#),
            ErrorKind::MissingOrderId
        ));
        assert!(matches!(kind(b"{}"), ErrorKind::MissingOrderId));
        assert!(matches!(kind(b""), ErrorKind::MissingOrderId));
    }
}
