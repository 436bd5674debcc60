//! Turns a gather's [`Outcome`] into the answer: the merged body, or the problem of the
//! required source that failed. Sources' data is embedded byte for byte, never re-parsed.
//!
//! Answer shape:
//! `{"request_id","order_id","complete","data":{"service1":{…},…},"sources":{"service1":{"status":"ok","elapsed_ms":3.1},…},"elapsed_ms"}`.

use std::io::Write as _;
use std::time::Duration;

use busgate_shared::config::MergeStrategy;
use busgate_shared::envelope::code as envelope_code;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::config::snapshot::{Route, Target, Transform};
use crate::error::{ErrorKind, GatewayError, SourceFailure};
use crate::gather::scatter::{Outcome, SourceResult};

/// Renders the answer for `outcome`: the body of a 200, or the error of a failed request.
pub fn answer(
    route: &Route,
    outcome: &Outcome,
    request_id: &str,
    order_id: &str,
    elapsed: Duration,
) -> Result<Vec<u8>, GatewayError> {
    if let Some(index) = outcome.failed {
        return Err(failure(route, outcome, index)
            .with_request(request_id)
            .with_order(order_id));
    }
    let complete = outcome.results.iter().all(SourceResult::is_present);
    let data_len: usize = outcome
        .results
        .iter()
        .map(|r| match r {
            SourceResult::Ok { data: Some(d), .. } => d.len() + 24,
            _ => 0,
        })
        .sum();
    let mut out = Vec::with_capacity(192 + data_len + 64 * outcome.results.len());
    out.extend_from_slice(b"{\"request_id\":");
    put_str(&mut out, request_id);
    out.extend_from_slice(b",\"order_id\":");
    put_str(&mut out, order_id);
    out.extend_from_slice(if complete {
        b",\"complete\":true,\"data\":"
    } else {
        b",\"complete\":false,\"data\":"
    });
    match route.merge {
        MergeStrategy::Namespace => namespace(&mut out, route, &outcome.results),
        MergeStrategy::Deep => deep(&mut out, route, &outcome.results),
    }
    out.extend_from_slice(b",\"sources\":");
    sources(&mut out, route, outcome);
    out.extend_from_slice(b",\"elapsed_ms\":");
    put_ms(&mut out, elapsed);
    out.push(b'}');
    Ok(out)
}

/// `namespace`: each source's data under its service name; sources without data are left out.
fn namespace(out: &mut Vec<u8>, route: &Route, results: &[SourceResult]) {
    out.push(b'{');
    let mut first = true;
    for (target, result) in route.targets.iter().zip(results) {
        let SourceResult::Ok { data, .. } = result else {
            continue;
        };
        if !first {
            out.push(b',');
        }
        first = false;
        put_str(out, &target.name.0);
        out.push(b':');
        match data {
            Some(bytes) => out.extend_from_slice(&transformed(target, bytes)),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

/// `deep`: every source's data object merged into one, lowest priority first, so a field
/// present in several sources takes the value of the highest-priority one.
fn deep(out: &mut Vec<u8>, route: &Route, results: &[SourceResult]) {
    let mut merged = Value::Object(Map::new());
    for &index in route.priority.iter().rev() {
        let (
            Some(target),
            Some(SourceResult::Ok {
                data: Some(data), ..
            }),
        ) = (route.targets.get(index), results.get(index))
        else {
            continue;
        };
        if let Ok(mut value) = serde_json::from_slice::<Value>(data) {
            if let (Some(t), Value::Object(map)) = (&target.transform, &mut value) {
                apply(t, map);
            }
            merge_into(&mut merged, value);
        }
    }
    let _ = serde_json::to_writer(&mut *out, &merged);
}

fn merge_into(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Object(base), Value::Object(top)) => {
            for (key, value) in top {
                match base.get_mut(&key) {
                    Some(existing) => merge_into(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, top) => *base = top,
    }
}

/// The data of a source after its target's `allow` / `deny` / `rename` (top-level fields of
/// an object; other values pass unchanged). Without a transform the bytes pass untouched.
fn transformed(target: &Target, data: &Bytes) -> Bytes {
    let Some(t) = &target.transform else {
        return data.clone();
    };
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(data) else {
        return data.clone();
    };
    apply(t, &mut map);
    serde_json::to_vec(&map)
        .map(Bytes::from)
        .unwrap_or_else(|_| data.clone())
}

/// `allow`, then `deny`, then `rename` on the top-level fields of an object.
fn apply(t: &Transform, map: &mut Map<String, Value>) {
    if !t.allow.is_empty() {
        map.retain(|key, _| t.allow.contains(key));
    }
    for key in &t.deny {
        map.remove(key);
    }
    for (from, to) in &t.rename {
        if let Some(value) = map.remove(from) {
            map.insert(to.clone(), value);
        }
    }
}

/// The `sources` object: status and timing per source, the error where there was one, why a
/// source was skipped, (composed routes: `starts` not empty) when each was asked, the
/// attempts a guard made, and what the cache and coalescing did.
fn sources(out: &mut Vec<u8>, route: &Route, outcome: &Outcome) {
    out.push(b'{');
    for (i, (target, result)) in route.targets.iter().zip(&outcome.results).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        put_str(out, &target.name.0);
        out.extend_from_slice(b":{\"status\":\"");
        out.extend_from_slice(result.status().as_bytes());
        out.push(b'"');
        if let SourceResult::Skipped(reason) = result {
            out.extend_from_slice(b",\"reason\":\"");
            out.extend_from_slice(reason.as_str().as_bytes());
            out.push(b'"');
        }
        if let Some(Some(start)) = outcome.starts.get(i) {
            out.extend_from_slice(b",\"started_ms\":");
            put_ms(out, *start);
        }
        // Without an alias the name is the service's own `Arc`: no string comparison.
        if !std::sync::Arc::ptr_eq(&target.name.0, &target.service.0) {
            out.extend_from_slice(b",\"service\":");
            put_str(out, &target.service.0);
        }
        let elapsed = match result {
            SourceResult::Ok { elapsed, .. }
            | SourceResult::NotFound { elapsed }
            | SourceResult::Error { elapsed, .. }
            | SourceResult::NoResponders { elapsed } => Some(*elapsed),
            SourceResult::Timeout { after } => Some(*after),
            SourceResult::Cancelled | SourceResult::Skipped(_) | SourceResult::CircuitOpen => None,
        };
        if let Some(elapsed) = elapsed {
            out.extend_from_slice(b",\"elapsed_ms\":");
            put_ms(out, elapsed);
        }
        if let SourceResult::Error { code, message, .. } = result {
            out.extend_from_slice(b",\"error\":{\"code\":");
            put_str(out, code);
            out.extend_from_slice(b",\"message\":");
            put_str(out, message);
            out.push(b'}');
        }
        if let Some(tries) = outcome.tries.get(i) {
            if tries.attempts > 1 {
                let _ = write!(out, ",\"attempts\":{}", tries.attempts);
            }
            if tries.hedged {
                out.extend_from_slice(b",\"hedged\":true");
            }
        }
        if !target.required {
            out.extend_from_slice(b",\"optional\":true");
        }
        if let Some(mark) = outcome.marks.get(i) {
            mark.put_fields(out);
        }
        out.push(b'}');
    }
    out.push(b'}');
}

fn failure(route: &Route, outcome: &Outcome, index: usize) -> GatewayError {
    let target = &route.targets[index];
    let name = &target.name.0;
    let (failure, detail) = match &outcome.results[index] {
        SourceResult::NotFound { .. } => (
            SourceFailure::NotFound,
            format!("required source {name} does not know this order"),
        ),
        // An upstream that timed out is a gateway timeout (504), as nginx would say.
        SourceResult::Error { code, message, .. } if code == envelope_code::UPSTREAM_TIMEOUT => (
            SourceFailure::Timeout,
            format!("required source {name} timed out upstream: {message}"),
        ),
        SourceResult::Error { code, message, .. } => (
            SourceFailure::Error,
            format!("required source {name} failed: {code}: {message}"),
        ),
        SourceResult::NoResponders { .. } => (
            SourceFailure::NoResponders,
            format!("no instance of required source {name} is available"),
        ),
        // Not asked: as good as nobody there to answer, for the client.
        SourceResult::CircuitOpen => (
            SourceFailure::NoResponders,
            format!("the circuit breaker of required source {name} is open"),
        ),
        SourceResult::Timeout { after } => (
            SourceFailure::Timeout,
            format!(
                "required source {name} did not answer within {}ms",
                after.as_millis()
            ),
        ),
        SourceResult::Ok { .. } | SourceResult::Cancelled | SourceResult::Skipped(_) => {
            return GatewayError::from(ErrorKind::Internal);
        }
    };
    let mut rendered = Vec::with_capacity(128);
    sources(&mut rendered, route, outcome);
    let sources = String::from_utf8(rendered)
        .ok()
        .and_then(|s| RawValue::from_string(s).ok())
        .unwrap_or_default();
    GatewayError::from(ErrorKind::Source {
        failure,
        detail,
        sources,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Milliseconds with two decimals: sub-millisecond timings stay visible.
fn put_ms(out: &mut Vec<u8>, d: Duration) {
    let hundredths = d.as_micros() / 10;
    let _ = write!(out, "{}.{:02}", hundredths / 100, hundredths % 100);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::config::snapshot::Transform;
    use crate::metrics::Name;

    const MS: Duration = Duration::from_millis(1);

    fn route() -> Route {
        let target = |name: &str, required| {
            // As the snapshot compiles it: without an alias, the name is the service's `Arc`.
            let service = Name(Arc::from(name));
            Target {
                name: service.clone(),
                service,
                subject: format!("busgate.svc.{name}").into(),
                required,
                timeout: 800 * MS,
                when: None,
                transform: None,
                guard: None,
                cache: None,
                coalesce: true,
            }
        };
        Route {
            name: Name(Arc::from("order")),
            operation: "order".into(),
            deadline: 1000 * MS,
            targets: vec![target("service1", true), target("service2", false)],
            merge: MergeStrategy::Namespace,
            priority: vec![0, 1],
            late: None,
            extra_replies: 0,
            graph: None,
        }
    }

    fn ok(json: &'static str) -> SourceResult {
        SourceResult::Ok {
            data: Some(Bytes::from_static(json.as_bytes())),
            elapsed: Duration::from_micros(1234),
        }
    }

    fn render(results: Vec<SourceResult>, failed: Option<usize>) -> Result<Value, GatewayError> {
        let outcome = Outcome {
            results,
            failed,
            marks: Vec::new(),
            tries: Vec::new(),
            starts: Vec::new(),
        };
        answer(&route(), &outcome, "r1", "A1", 5 * MS)
            .map(|body| serde_json::from_slice(&body).expect("valid JSON"))
    }

    #[test]
    fn both_sources_are_merged_under_their_names() {
        let v = render(
            vec![ok(r#"{"amount":1}"#), ok(r#"{"carrier":"DHL"}"#)],
            None,
        )
        .expect("ok");
        assert_eq!(
            v,
            json!({
                "request_id": "r1", "order_id": "A1", "complete": true,
                "data": {"service1": {"amount": 1}, "service2": {"carrier": "DHL"}},
                "sources": {
                    "service1": {"status": "ok", "elapsed_ms": 1.23},
                    "service2": {"status": "ok", "elapsed_ms": 1.23, "optional": true}
                },
                "elapsed_ms": 5.0
            })
        );
    }

    #[test]
    fn a_missing_optional_source_is_data_not_an_error() {
        let v = render(
            vec![
                ok(r#"{"amount":1}"#),
                SourceResult::Timeout { after: 800 * MS },
            ],
            None,
        )
        .expect("ok");
        assert_eq!(v["complete"], false);
        assert_eq!(v["data"], json!({"service1": {"amount": 1}}));
        assert_eq!(
            v["sources"]["service2"],
            json!({"status": "timeout", "elapsed_ms": 800.0, "optional": true})
        );
        let v = render(
            vec![
                ok("null"),
                SourceResult::Error {
                    code: "upstream_status".into(),
                    message: "upstream answered 500".into(),
                    elapsed: MS,
                },
            ],
            None,
        )
        .expect("ok");
        assert_eq!(v["data"], json!({"service1": null}));
        assert_eq!(v["sources"]["service2"]["error"]["code"], "upstream_status");
    }

    #[test]
    fn a_failed_required_source_becomes_its_problem() {
        let cases = [
            (
                SourceResult::NotFound { elapsed: MS },
                SourceFailure::NotFound,
            ),
            (
                SourceResult::NoResponders { elapsed: MS },
                SourceFailure::NoResponders,
            ),
            (
                SourceResult::Timeout { after: 800 * MS },
                SourceFailure::Timeout,
            ),
            (
                SourceResult::Error {
                    code: "x".into(),
                    message: "y".into(),
                    elapsed: MS,
                },
                SourceFailure::Error,
            ),
            (
                SourceResult::Error {
                    code: "upstream_timeout".into(),
                    message: "upstream did not answer in time".into(),
                    elapsed: MS,
                },
                SourceFailure::Timeout,
            ),
        ];
        for (result, expected) in cases {
            let err = render(vec![result, SourceResult::Cancelled], Some(0)).expect_err("fails");
            let ErrorKind::Source {
                failure, sources, ..
            } = &err.kind
            else {
                panic!("{err:?}")
            };
            assert_eq!(*failure, expected);
            let sources: Value = serde_json::from_str(sources.get()).expect("json");
            assert_eq!(
                sources["service2"],
                json!({"status": "cancelled", "optional": true})
            );
            assert_eq!(err.request_id.as_deref(), Some("r1"));
            assert_eq!(err.order_id.as_deref(), Some("A1"));
        }
    }

    #[test]
    fn deep_merge_follows_the_declared_priority_not_arrival() {
        let mut r = route();
        r.merge = MergeStrategy::Deep;
        let results = vec![
            ok(r#"{"status":"paid","shipping":{"carrier":"DHL","eta":"a"},"items":[1]}"#),
            ok(r#"{"status":"shipped","shipping":{"eta":"b"},"tracking":"T"}"#),
        ];
        let outcome = Outcome {
            results,
            failed: None,
            marks: Vec::new(),
            tries: Vec::new(),
            starts: Vec::new(),
        };
        let merged = |priority: Vec<usize>, r: &mut Route| {
            r.priority = priority;
            let body = answer(r, &outcome, "r1", "A1", MS).expect("ok");
            serde_json::from_slice::<Value>(&body).expect("json")["data"].clone()
        };
        assert_eq!(
            merged(vec![0, 1], &mut r),
            json!({"status":"paid","shipping":{"carrier":"DHL","eta":"a"},"items":[1],"tracking":"T"})
        );
        assert_eq!(
            merged(vec![1, 0], &mut r),
            json!({"status":"shipped","shipping":{"carrier":"DHL","eta":"b"},"items":[1],"tracking":"T"})
        );
    }

    #[test]
    fn allow_deny_and_rename_apply_before_the_merge() {
        let mut r = route();
        r.targets[0].transform = Some(Transform {
            allow: vec!["amount".into(), "status".into()],
            deny: vec![],
            rename: vec![("status".into(), "order_status".into())],
        });
        r.targets[1].transform = Some(Transform {
            allow: vec![],
            deny: vec!["secret".into()],
            rename: vec![],
        });
        let results = vec![
            ok(r#"{"amount":1,"status":"paid","internal":true}"#),
            ok(r#"{"carrier":"DHL","secret":"x"}"#),
        ];
        let body = answer(
            &r,
            &Outcome {
                results,
                failed: None,
                marks: Vec::new(),
                tries: Vec::new(),
                starts: Vec::new(),
            },
            "r1",
            "A1",
            MS,
        )
        .expect("ok");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v["data"],
            json!({"service1": {"amount": 1, "order_status": "paid"}, "service2": {"carrier": "DHL"}})
        );
    }

    #[test]
    fn skipped_targets_leave_the_answer_complete() {
        let v = render(
            vec![
                ok(r#"{"amount":1}"#),
                SourceResult::Skipped(crate::gather::graph::Skip::Condition),
            ],
            None,
        )
        .expect("ok");
        assert_eq!(v["complete"], true);
        assert_eq!(
            v["sources"]["service2"],
            json!({"status": "skipped", "reason": "condition", "optional": true})
        );
        assert_eq!(v["data"], json!({"service1": {"amount": 1}}));
    }

    #[test]
    fn attempts_hedges_and_open_circuits_are_shown_per_source() {
        let outcome = Outcome {
            results: vec![ok(r#"{"a":1}"#), SourceResult::CircuitOpen],
            failed: None,
            starts: Vec::new(),
            marks: Vec::new(),
            tries: vec![
                crate::gather::scatter::Tries {
                    attempts: 2,
                    hedged: true,
                },
                crate::gather::scatter::Tries::default(),
            ],
        };
        let body = answer(&route(), &outcome, "r1", "A1", 5 * MS).expect("answer");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v["sources"]["service1"],
            json!({"status": "ok", "elapsed_ms": 1.23, "attempts": 2, "hedged": true})
        );
        assert_eq!(
            v["sources"]["service2"],
            json!({"status": "circuit_open", "optional": true})
        );
        assert_eq!(v["complete"], false);
        let failed = Outcome {
            results: vec![SourceResult::CircuitOpen, ok("{}")],
            failed: Some(0),
            starts: Vec::new(),
            marks: Vec::new(),
            tries: Vec::new(),
        };
        let e = answer(&route(), &failed, "r1", "A1", 5 * MS).expect_err("required");
        assert!(e.to_string().contains("circuit breaker"), "{e}");
    }

    #[test]
    fn aliases_name_data_and_sources_and_composed_routes_show_starts() {
        let mut r = route();
        r.targets[1].name = Name(Arc::from("carrier"));
        let outcome = Outcome {
            results: vec![
                ok(r#"{"amount":1}"#),
                SourceResult::Skipped(crate::gather::graph::Skip::MissingValue),
            ],
            failed: None,
            tries: Vec::new(),
            starts: vec![Some(Duration::from_micros(20)), None],
            marks: Vec::new(),
        };
        let body = answer(&r, &outcome, "r1", "A1", MS).expect("ok");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["sources"]["service1"]["started_ms"], json!(0.02));
        assert_eq!(
            v["sources"]["carrier"],
            json!({"status": "skipped", "reason": "missing_value", "service": "service2", "optional": true})
        );
        let outcome = Outcome {
            results: vec![ok(r#"{"amount":1}"#), ok(r#"{"name":"DHL"}"#)],
            failed: None,
            tries: Vec::new(),
            starts: Vec::new(),
            marks: Vec::new(),
        };
        let body = answer(&r, &outcome, "r1", "A1", MS).expect("ok");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["data"]["carrier"], json!({"name": "DHL"}));
        assert!(v["sources"]["service1"].get("started_ms").is_none());
    }

    #[test]
    fn milliseconds_keep_two_decimals() {
        let mut out = Vec::new();
        put_ms(&mut out, Duration::from_micros(345));
        assert_eq!(out, b"0.34");
    }
}
