//! End-to-end: the admin listener under an attacker's eye. Security headers on every answer,
//! `If-Match` per RFC 9110, hostile names, the audit trail, and `/metrics` on the admin listener.

use busgate_tests::fixture::Settings;
use busgate_tests::support;

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use support::{get_text, http, Gateway, Stack, ADMIN_TOKEN};

/// The `ETag` of an admin resource.
async fn etag_of(gateway: &Gateway, path: &str) -> String {
    let (status, headers, body) = gateway.admin_send("GET", path, None, None).await.parts();
    assert_eq!(status, 200, "{path}: {body}");
    headers["etag"].to_str().expect("ascii").to_owned()
}

fn order_route() -> Value {
    json!({
        "bindings": [{"method": "GET", "path": "/api/orders/{order_id}"},
                     {"method": "POST", "path": "/api/order"}],
        "deadline": "1s",
        "targets": [{"service": "service1"}, {"service": "service2", "required": false}]
    })
}

/// The headers every admin answer carries, whatever it is.
fn assert_secured(what: &str, headers: &HeaderMap) {
    let get = |name: &str| {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .to_str()
            .expect("ascii")
            .to_owned()
    };
    let csp = get("content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe"), "{what}: {csp}");
    assert!(!csp.contains('*'), "{what}: {csp}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(get("referrer-policy"), "no-referrer", "{what}");
}

#[tokio::test]
async fn every_admin_answer_carries_the_security_headers() {
    let stack = Stack::start(&Settings::default()).await;
    let gateway = &stack.gateway;
    let mut answers = Vec::new();
    for path in [
        "/",
        "/ui/app.js",
        "/ui/clients.js",
        "/ui/resilience.js",
        "/ui/graph.js",
        "/ui/app.css",
        "/admin/v1/openapi.json",
    ] {
        let response = http()
            .get(gateway.admin_url(path))
            .send()
            .await
            .expect("ui");
        answers.push((
            format!("GET {path}"),
            response.status().as_u16(),
            response.headers().clone(),
        ));
    }
    // The API, its refusals and the fallback.
    let response = http()
        .get(gateway.admin_url("/admin/v1/routes"))
        .send()
        .await
        .expect("send");
    answers.push((
        "without a token".into(),
        response.status().as_u16(),
        response.headers().clone(),
    ));
    let route = order_route();
    for (what, method, path, tag, body) in [
        (
            "GET /admin/v1/routes",
            "GET",
            "/admin/v1/routes",
            None,
            None,
        ),
        ("GET /nowhere", "GET", "/nowhere", None, None),
        (
            "PATCH /admin/v1/routes",
            "PATCH",
            "/admin/v1/routes",
            None,
            None,
        ),
        (
            "a lost update",
            "PUT",
            "/admin/v1/routes/order",
            Some("\"0\""),
            Some(&route),
        ),
    ] {
        let (status, headers, body) = gateway.admin_send(method, path, tag, body).await.parts();
        if method == "PATCH" {
            assert_eq!(
                body["type"], "urn:busgate:problem:method-not-allowed",
                "{body}"
            );
        }
        answers.push((what.into(), status, headers));
    }
    let statuses: Vec<u16> = answers.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 200, 200, 401, 200, 404, 405, 412]
    );
    for (what, _, headers) in &answers {
        assert_secured(what, headers);
    }
    // The UI works under that policy: no inline script, style or event handler.
    let page = get_text(&gateway.admin_url("/")).await.to_ascii_lowercase();
    assert!(page.contains("<script src=\"/ui/app.js\"></script>"));
    assert!(page.contains("<script src=\"/ui/clients.js\"></script>"));
    assert!(page.contains("<script src=\"/ui/resilience.js\"></script>"));
    assert!(page.contains("<script src=\"/ui/graph.js\"></script>"));
    assert_eq!(
        page.matches("<script").count(),
        4,
        "four scripts (app.js, clients.js, resilience.js, graph.js), each from a file"
    );
    assert!(!page.contains("<style"), "no inline style element");
    assert!(!page.contains(" style="), "no style attribute");
    let handler = regex_lite_handler(&page);
    assert!(handler.is_none(), "an inline event handler: {handler:?}");
}

/// The first `on…=` attribute in `html`, if any.
fn regex_lite_handler(html: &str) -> Option<String> {
    html.match_indices(" on").find_map(|(at, _)| {
        let rest = &html[at + 3..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        (!name.is_empty() && rest[name.len()..].trim_start().starts_with('='))
            .then(|| format!("on{name}"))
    })
}

#[tokio::test]
async fn if_match_follows_rfc_9110() {
    let stack = Stack::start(&Settings::default()).await;
    let gateway = &stack.gateway;
    let path = "/admin/v1/routes/order";
    let route = order_route();
    let current = etag_of(gateway, path).await;
    let revision = current.trim_matches('"').to_owned();
    // A condition that is false is 412 (and changes nothing); only a missing one is 428.
    let weak = format!("W/{current}");
    let refused = [
        (None, 428, "precondition-required"),
        (Some("\"stale\""), 412, "precondition-failed"),
        (Some("stale"), 412, "precondition-failed"),
        (Some(weak.as_str()), 412, "precondition-failed"),
        (Some("\"0\", \"1\""), 412, "precondition-failed"),
    ];
    for (tag, status, kind) in refused {
        let (got, _, problem) = gateway
            .admin_send("PUT", path, tag, Some(&route))
            .await
            .parts();
        assert_eq!(got, status, "If-Match {tag:?}: {problem}");
        assert_eq!(
            problem["type"],
            format!("urn:busgate:problem:{kind}"),
            "{tag:?}"
        );
    }
    assert_eq!(
        etag_of(gateway, path).await,
        current,
        "a refused write changed nothing"
    );
    // A list with the current tag among others matches.
    let list = format!("\"0\", W/\"1\", {current}");
    let (status, headers, body) = gateway
        .admin_send("PUT", path, Some(&list), Some(&route))
        .await
        .parts();
    assert_eq!(status, 200, "{body}");
    let after_list = headers["etag"].to_str().expect("ascii").to_owned();
    assert_ne!(after_list, current);
    // `*` matches whatever is current.
    let (status, headers, body) = gateway
        .admin_send("PUT", path, Some("*"), Some(&route))
        .await
        .parts();
    assert_eq!(status, 200, "{body}");
    let after_any = headers["etag"].to_str().expect("ascii").to_owned();
    assert_ne!(after_any, after_list);
    // The tag read first is stale now: 412, and the problem says where the object is.
    let (status, _, problem) = gateway
        .admin_send("PUT", path, Some(&current), Some(&route))
        .await
        .parts();
    assert_eq!(status, 412, "{problem}");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(detail.contains(&after_any), "{detail}");
    // `*` or a tag on an object that does not exist: 412.
    let ghost = "/admin/v1/routes/ghost";
    for tag in ["*", "\"1\""] {
        let (status, _, problem) = gateway
            .admin_send("PUT", ghost, Some(tag), Some(&route))
            .await
            .parts();
        assert_eq!(status, 412, "PUT If-Match {tag}: {problem}");
        let (status, _, problem) = gateway
            .admin_send("DELETE", ghost, Some(tag), None)
            .await
            .parts();
        assert_eq!(status, 412, "DELETE If-Match {tag}: {problem}");
    }
    // Delete and rollback follow the same rules.
    let (status, _, _) = gateway.admin_send("DELETE", path, None, None).await.parts();
    assert_eq!(status, 428);
    let (status, _, _) = gateway
        .admin_send("DELETE", path, Some(&weak), None)
        .await
        .parts();
    assert_eq!(status, 412);
    let rollback = format!("{path}/rollback");
    let back = json!({"revision": revision.parse::<u64>().expect("revision")});
    let (status, _, _) = gateway
        .admin_send("POST", &rollback, Some(&current), Some(&back))
        .await
        .parts();
    assert_eq!(status, 412);
    let (status, _, body) = gateway
        .admin_send("POST", &rollback, Some("*"), Some(&back))
        .await
        .parts();
    assert_eq!(status, 200, "{body}");
    // The import needs If-Match too: the ETag of an export, which any write makes stale.
    let (status, headers, exported) = gateway
        .admin_send("GET", "/admin/v1/config", None, None)
        .await
        .parts();
    assert_eq!(status, 200);
    let config_tag = headers["etag"].to_str().expect("ascii").to_owned();
    let (status, _, _) = gateway
        .admin_send("PUT", "/admin/v1/config", None, Some(&exported))
        .await
        .parts();
    assert_eq!(status, 428);
    let (status, _, _) = gateway
        .admin_send(
            "PUT",
            "/admin/v1/config",
            Some(&format!("W/{config_tag}")),
            Some(&exported),
        )
        .await
        .parts();
    assert_eq!(status, 412);
    let (status, headers, body) = gateway
        .admin_send(
            "PUT",
            "/admin/v1/config",
            Some(&config_tag),
            Some(&exported),
        )
        .await
        .parts();
    assert_eq!(status, 200, "{body}");
    let imported_tag = headers["etag"].to_str().expect("ascii").to_owned();
    let (status, _, _) = gateway
        .admin_send(
            "PUT",
            "/admin/v1/config",
            Some(&config_tag),
            Some(&exported),
        )
        .await
        .parts();
    assert_eq!(status, 412, "the store changed since that export");
    let (status, _, body) = gateway
        .admin_send(
            "PUT",
            "/admin/v1/config",
            Some(&imported_tag),
            Some(&exported),
        )
        .await
        .parts();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn hostile_names_are_not_found_and_never_reach_the_store() {
    let stack = Stack::start(&Settings::default()).await;
    let gateway = &stack.gateway;
    let long = "a".repeat(33);
    let names = [
        "%C2%84",
        "%FF",
        "%00",
        "a%0D%0Ab",
        "...",
        "..%2F..%2Fconfig",
        "a.b",
        "%2A",
        "%3E",
        "a%20b",
        "Order",
        "1abc",
        "_x",
        long.as_str(),
        "%E2%80%AE",
    ];
    let mut checked = 0;
    for name in names {
        for kind in ["routes", "services"] {
            let base = format!("/admin/v1/{kind}/{name}");
            let requests = [
                ("GET", base.clone(), None),
                ("PUT", base.clone(), Some(json!({}))),
                ("DELETE", base.clone(), None),
                ("GET", format!("{base}/history"), None),
                (
                    "POST",
                    format!("{base}/rollback"),
                    Some(json!({"revision": 1})),
                ),
                ("GET", format!("{base}/instances"), None),
            ];
            for (method, path, body) in requests {
                let (status, headers, problem) = gateway
                    .admin_send(method, &path, Some("*"), body.as_ref())
                    .await
                    .parts();
                assert_eq!(status, 404, "{method} {path}: {problem}");
                assert_eq!(headers["content-type"], "application/problem+json");
                assert_eq!(
                    problem["type"], "urn:busgate:problem:not-found",
                    "{method} {path}"
                );
                checked += 1;
            }
        }
        // A hostile kind too.
        let (status, _, problem) = gateway
            .admin_send("GET", &format!("/admin/v1/{name}"), None, None)
            .await
            .parts();
        assert_eq!(status, 404, "kind {name}: {problem}");
    }
    assert_eq!(checked, names.len() * 12);
    // The store was never asked about them: the configuration instance is still fine.
    let (status, _, status_doc) = gateway
        .admin_send("GET", "/admin/v1/status", None, None)
        .await
        .parts();
    assert_eq!(status, 200);
    assert_eq!(
        status_doc["config"]["last_error"],
        Value::Null,
        "{status_doc}"
    );
    assert!(!gateway.proc.logged("request failed inside the gateway"));
}

#[tokio::test]
async fn admin_writes_are_audited_without_the_token() {
    let stack = Stack::start(&Settings::default()).await;
    let gateway = &stack.gateway;
    let path = "/admin/v1/routes/order";
    let current = etag_of(gateway, path).await;
    let old: u64 = current.trim_matches('"').parse().expect("revision");
    let (status, headers, _) = gateway
        .admin_send("PUT", path, Some(&current), Some(&order_route()))
        .await
        .parts();
    assert_eq!(status, 200);
    let new: u64 = headers["etag"]
        .to_str()
        .expect("ascii")
        .trim_matches('"')
        .parse()
        .expect("rev");
    let (status, _, _) = gateway
        .admin_send("PUT", path, Some(&current), Some(&order_route()))
        .await
        .parts();
    assert_eq!(status, 412);
    let refused = http()
        .delete(gateway.admin_url(path))
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 401);
    // Reads are not audited; the three writes are, in order.
    let mut events = Vec::new();
    gateway.proc.wait_for(Duration::from_secs(5), |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        if v["target"] == "busgate::audit" {
            events.push(v);
        }
        (events.len() == 3).then_some(())
    });
    let done = &events[0];
    assert_eq!(done["object"], "routes.order", "{done}");
    assert_eq!(done["method"], "PUT");
    assert_eq!(done["old_revision"], old, "{done}");
    assert_eq!(done["new_revision"], new, "{done}");
    assert_eq!(done["status"], 200);
    assert_eq!(done["outcome"], "done");
    let token = done["token"].as_str().expect("token fingerprint");
    assert_eq!(token.len(), 12, "{done}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let lost = &events[1];
    assert_eq!(lost["token"], token, "the same token, the same fingerprint");
    assert_eq!(
        (lost["status"].as_u64(), lost["outcome"].as_str()),
        (Some(412), Some("refused"))
    );
    assert_eq!(lost["old_revision"], new, "the revision it was at: {lost}");
    assert!(lost.get("new_revision").is_none(), "{lost}");
    let intruder = &events[2];
    assert_eq!(intruder["token"], "invalid", "{intruder}");
    assert_eq!(intruder["method"], "DELETE");
    assert_eq!(intruder["status"], 401);
    // Neither the token nor the one presented appears anywhere in the log.
    assert!(
        !gateway.proc.logged(ADMIN_TOKEN),
        "the admin token is in the log"
    );
    assert!(!gateway.proc.logged("not-the-token"));
}

#[tokio::test]
async fn metrics_move_to_the_admin_listener_by_a_setting() {
    let stack = Stack::start(&Settings::default().metrics_listener("admin")).await;
    let gateway = &stack.gateway;
    let response = reqwest::get(gateway.url("/metrics")).await.expect("public");
    assert_eq!(response.status(), 404);
    let response = reqwest::get(gateway.admin_url("/metrics"))
        .await
        .expect("admin");
    assert_eq!(response.status(), 200, "served without the admin token");
    assert_secured("GET /metrics on the admin listener", response.headers());
    assert!(response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain"));
    let text = response.text().await.expect("text");
    assert!(text.contains("busgate_http_requests_total"), "{text}");
    // Health stays on the public listener.
    let live = reqwest::get(gateway.url("/health/live"))
        .await
        .expect("live");
    assert_eq!(live.status(), 200);
}

/// Every admin answer carries a `Busgate-Request-Id`, and every admin problem document the same
/// `request_id`: a success, a refusal without the token, a hostile name, an unknown path.
#[tokio::test]
async fn every_admin_answer_has_a_request_id() {
    let stack = Stack::start(&Settings::default()).await;
    let gateway = &stack.gateway;
    let (status, headers, _) = gateway
        .admin_send("GET", "/admin/v1/routes", None, None)
        .await
        .parts();
    assert_eq!(status, 200);
    assert!(headers.contains_key("busgate-request-id"));
    let unauthorized = http()
        .get(gateway.admin_url("/admin/v1/routes"))
        .send()
        .await
        .expect("send");
    let mut answers = vec![(
        unauthorized.status().as_u16(),
        unauthorized.headers().clone(),
        unauthorized.json::<Value>().await.expect("problem"),
    )];
    for path in ["/admin/v1/routes/%C2%84", "/admin/v1/nope"] {
        answers.push(gateway.admin_send("GET", path, None, None).await.parts());
    }
    for (status, headers, problem) in answers {
        let id = headers
            .get("busgate-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(!id.is_empty(), "{status}: no Busgate-Request-Id");
        assert_eq!(problem["request_id"], id.as_str(), "{status}: {problem}");
    }
}
