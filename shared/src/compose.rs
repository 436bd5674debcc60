//! Composition: a route's targets as a graph. The schema of what a target adds to say that it
//! waits for other targets' answers (`as`, `needs`, `with`, `when.field`), the JSON Pointers
//! into the data gathered so far, and the validation of a route's graph (unknown names, cycles,
//! pointers into targets that are not dependencies, alias clashes, attributes an upstream needs).
//!
//! A target's *name* is its `as` alias, or its service's name: data and `sources` use it, and
//! `needs` and pointers name targets by it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{validate, Error};

/// The most attributes one target may be given.
pub const MAX_WITH: usize = 16;
/// The longest JSON Pointer.
pub const MAX_POINTER: usize = 256;
/// The most values an `in` condition may list.
pub const MAX_IN: usize = 64;

/// `when.field`: a condition on the data gathered so far. Exactly one of `equals`, `in`,
/// `exists` is given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldCondition {
    /// JSON Pointer (RFC 6901) into the data gathered so far: `/<target>/<field>/…`.
    pub path: String,
    /// The value there must equal this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
    /// The value there must be one of these.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<serde_json::Value>>,
    /// `true`: there must be a value (not `null`); `false`: there must be none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

/// A JSON Pointer split at its first token: the target it names and the pointer into that
/// target's data (`""` for the whole data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer<'a> {
    /// The target's name (unescaped: `~1` → `/`, `~0` → `~`).
    pub target: String,
    /// The rest, still a JSON Pointer (escaped), for `serde_json::Value::pointer`.
    pub rest: &'a str,
}

/// Splits `pointer` (`/service1/customer/id`) into the target it names and the rest.
pub fn split_pointer(pointer: &str) -> Result<Pointer<'_>, String> {
    if pointer.len() > MAX_POINTER {
        return Err(format!("longer than {MAX_POINTER} characters"));
    }
    let Some(body) = pointer.strip_prefix('/') else {
        return Err("a JSON Pointer starts with / and names a target first".into());
    };
    let (first, rest) = match body.find('/') {
        Some(i) => (&body[..i], &body[i..]),
        None => (body, ""),
    };
    // RFC 6901: `~` must be followed by 0 or 1.
    let bytes = pointer.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')) {
            return Err("~ must be followed by 0 or 1 (RFC 6901)".into());
        }
    }
    if first.is_empty() {
        return Err("the first token must name a target".into());
    }
    Ok(Pointer {
        target: first.replace("~1", "/").replace("~0", "~"),
        rest,
    })
}

pub use crate::validate::is_attribute_name;

/// The `{attribute}` placeholders of a service's upstream URL (none without an upstream).
pub fn placeholders(upstream: Option<&crate::upstream::UpstreamSpec>) -> Vec<String> {
    let template = upstream.and_then(|u| crate::upstream::UrlTemplate::parse(&u.url).ok());
    template.map_or_else(Vec::new, |t| t.attributes().map(str::to_owned).collect())
}

/// One target of a route as the graph's checks see it (built by `config` from a target).
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// Its name (alias or service).
    pub name: &'a str,
    /// Its alias, if it has one.
    pub alias: Option<&'a str>,
    /// Its service.
    pub service: &'a str,
    /// `needs`.
    pub needs: &'a [String],
    /// `with`.
    pub with: &'a BTreeMap<String, String>,
    /// `when.field`.
    pub field: Option<&'a FieldCondition>,
    /// The `{attribute}` placeholders of its service's upstream URL (none without one).
    pub placeholders: &'a [String],
}

/// Checks the graph of one route (`at` = `routes.<name>`): names unique (an alias may not
/// clash with another target's name), every need a target of the route and no cycle (the
/// error names it), every `with` pointer into a target this one needs (directly or through
/// another need: its answer is in by then), and each `{name}` of the service's upstream URL
/// given. A `when.field` path makes the target it reads a need of its own.
pub fn validate_route(at: &str, targets: &[Node<'_>]) -> Result<(), Error> {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, target) in targets.iter().enumerate() {
        let field = format!("{at}.targets[{i}]");
        if let Some(alias) = target.alias {
            validate::name(&format!("{field}.as"), alias)?;
        }
        if let Some(j) = index.insert(target.name, i) {
            let what = if target.alias.is_some() {
                format!("{field}.as")
            } else {
                format!("{field}.service")
            };
            return Err(Error::invalid(
                what,
                format!(
                    "alias clash: {:?} already names targets[{j}]; give one an `as` of its own",
                    target.name
                ),
            ));
        }
    }
    // Direct needs by index.
    let mut needs: Vec<Vec<usize>> = Vec::with_capacity(targets.len());
    for (i, target) in targets.iter().enumerate() {
        let mut list = Vec::new();
        for (k, need) in target.needs.iter().enumerate() {
            let field = format!("{at}.targets[{i}].needs[{k}]");
            let Some(&j) = index.get(need.as_str()) else {
                return Err(Error::invalid(
                    field,
                    format!("unknown need {need:?}: no target of this route has that name"),
                ));
            };
            if j == i {
                return Err(Error::invalid(field, format!("cycle: {need} needs itself")));
            }
            if list.contains(&j) {
                return Err(Error::invalid(field, format!("{need:?} is listed twice")));
            }
            list.push(j);
        }
        // A condition on another target's answer waits for that answer: its target is a need
        // even when `needs` does not list it.
        if let Some(condition) = target.field {
            let field = format!("{at}.targets[{i}].when.field.path");
            let p = split_pointer(&condition.path).map_err(|e| Error::invalid(&field, e))?;
            match index.get(p.target.as_str()) {
                Some(&j) if j == i => {
                    return Err(Error::invalid(
                        field,
                        format!("cycle: {} reads its own answer", target.name),
                    ))
                }
                Some(&j) => {
                    if !list.contains(&j) {
                        list.push(j);
                    }
                }
                None => {
                    return Err(Error::invalid(
                        field,
                        format!("{:?} names no target of this route", condition.path),
                    ))
                }
            }
        }
        needs.push(list);
    }
    if let Some(cycle) = find_cycle(&needs) {
        let names: Vec<&str> = cycle.iter().map(|&i| targets[i].name).collect();
        let first = cycle[0];
        return Err(Error::invalid(
            format!("{at}.targets[{first}].needs"),
            format!("cycle: {}", names.join(" → ")),
        ));
    }
    for (i, target) in targets.iter().enumerate() {
        let field = format!("{at}.targets[{i}]");
        let ancestors = ancestors(&needs, i);
        let check_pointer = |field: String, pointer: &str| -> Result<(), Error> {
            let p = split_pointer(pointer).map_err(|e| Error::invalid(&field, e))?;
            match index.get(p.target.as_str()) {
                Some(j) if ancestors.contains(j) => Ok(()),
                Some(_) => Err(Error::invalid(
                    field,
                    format!(
                        "{pointer:?} points into {:?}, which this target does not need (add it to needs)",
                        p.target
                    ),
                )),
                None => Err(Error::invalid(
                    field,
                    format!("{pointer:?} names no target of this route"),
                )),
            }
        };
        if target.with.len() > MAX_WITH {
            return Err(Error::invalid(
                format!("{field}.with"),
                format!("at most {MAX_WITH} attributes"),
            ));
        }
        for (name, pointer) in target.with {
            if !is_attribute_name(name) {
                return Err(Error::invalid(
                    format!("{field}.with.{name}"),
                    "an attribute name is 1-32 of a-z 0-9 _, not starting with a digit, and not order_id",
                ));
            }
            check_pointer(format!("{field}.with.{name}"), pointer)?;
        }
        if let Some(condition) = target.field {
            let f = format!("{field}.when.field");
            let given = usize::from(condition.equals.is_some())
                + usize::from(condition.one_of.is_some())
                + usize::from(condition.exists.is_some());
            if given != 1 {
                return Err(Error::invalid(f, "give exactly one of equals, in, exists"));
            }
            if condition.one_of.as_ref().is_some_and(|v| v.len() > MAX_IN) {
                return Err(Error::invalid(
                    format!("{f}.in"),
                    format!("at most {MAX_IN} values"),
                ));
            }
            check_pointer(format!("{f}.path"), &condition.path)?;
        }
        for name in target.placeholders {
            if !target.with.contains_key(name) {
                return Err(Error::invalid(
                    format!("{field}.with"),
                    format!(
                        "the upstream of service {:?} uses {{{name}}}: give it in with",
                        target.service
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The targets each target of a valid route waits for, by index: its `needs` and the target its
/// `when.field` reads.
pub fn needs_of(targets: &[Node<'_>]) -> Vec<Vec<usize>> {
    let position = |name: &str| targets.iter().position(|t| t.name == name);
    targets
        .iter()
        .map(|t| {
            let mut list: Vec<usize> = t.needs.iter().filter_map(|n| position(n)).collect();
            if let Some(p) = t.field.and_then(|f| split_pointer(&f.path).ok()) {
                if let Some(j) = position(&p.target) {
                    if !list.contains(&j) {
                        list.push(j);
                    }
                }
            }
            list
        })
        .collect()
}

/// Every target `i` waits for, directly or through another.
fn ancestors(needs: &[Vec<usize>], i: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<usize> = needs[i].clone();
    while let Some(j) = stack.pop() {
        if seen.insert(j) {
            stack.extend(needs[j].iter().copied());
        }
    }
    seen
}

/// A cycle of the needs graph, as the targets along it (the first repeated at the end).
fn find_cycle(needs: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the path, 2 = done.
    let mut mark = vec![0u8; needs.len()];
    let mut path = Vec::new();
    fn visit(
        i: usize,
        needs: &[Vec<usize>],
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[i] = 1;
        path.push(i);
        for &j in &needs[i] {
            if mark[j] == 1 {
                let from = path.iter().position(|&k| k == j).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(j);
                return Some(cycle);
            }
            if mark[j] == 0 {
                if let Some(c) = visit(j, needs, mark, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        mark[i] = 2;
        None
    }
    for i in 0..needs.len() {
        if mark[i] == 0 {
            if let Some(c) = visit(i, needs, &mut mark, &mut path) {
                return Some(c);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSpec, ServiceSpec};

    fn spec(targets: serde_json::Value) -> ConfigSpec {
        let mut spec = ConfigSpec::builtin();
        spec.services
            .insert("carriers".into(), ServiceSpec::default());
        let route = spec.routes.get_mut("order").expect("order");
        route.targets = serde_json::from_value(targets).expect("targets");
        spec
    }

    fn error(targets: serde_json::Value) -> (String, String) {
        match spec(targets).validate() {
            Err(Error::Invalid { field, reason }) => (field, reason),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_contract_example_is_valid() {
        let s = spec(serde_json::json!([
            {"service": "service1"},
            {"service": "carriers", "as": "carrier", "needs": ["service2"],
             "with": {"carrier": "/service2/carrier"},
             "when": {"field": {"path": "/service1/status", "in": ["shipped", "delivered"]}}},
            {"service": "service2", "required": false}
        ]));
        s.validate().expect("valid");
    }

    #[test]
    fn unknown_needs_cycles_and_clashes_are_named() {
        let (field, reason) = error(serde_json::json!([
            {"service": "service1", "needs": ["nope"]}
        ]));
        assert_eq!(field, "routes.order.targets[0].needs[0]");
        assert!(reason.contains("unknown need \"nope\""), "{reason}");
        let (field, reason) = error(serde_json::json!([
            {"service": "service1", "needs": ["carrier"]},
            {"service": "service2", "needs": ["service1"]},
            {"service": "carriers", "as": "carrier", "needs": ["service2"]}
        ]));
        assert!(field.ends_with(".needs"), "{field}");
        assert!(
            reason.contains("cycle: service1 → carrier → service2 → service1"),
            "{reason}"
        );
        let (_, reason) =
            error(serde_json::json!([{"service": "service1", "needs": ["service1"]}]));
        assert!(reason.contains("cycle"), "{reason}");
        let (field, reason) = error(serde_json::json!([
            {"service": "service1"},
            {"service": "service2", "as": "service1"}
        ]));
        assert_eq!(field, "routes.order.targets[1].as");
        assert!(reason.contains("alias clash"), "{reason}");
        let (field, reason) = error(serde_json::json!([
            {"service": "service1"},
            {"service": "service1"}
        ]));
        assert_eq!(field, "routes.order.targets[1].service");
        assert!(reason.contains("alias clash"), "{reason}");
    }

    #[test]
    fn pointers_must_lead_into_needed_targets() {
        let (field, reason) = error(serde_json::json!([
            {"service": "service1"},
            {"service": "service2"},
            {"service": "carriers", "needs": ["service2"], "with": {"c": "/service1/x"}}
        ]));
        assert_eq!(field, "routes.order.targets[2].with.c");
        assert!(reason.contains("does not need"), "{reason}");
        // Through another need is fine: its answer is in by then.
        spec(serde_json::json!([
            {"service": "service1"},
            {"service": "service2", "needs": ["service1"]},
            {"service": "carriers", "needs": ["service2"], "with": {"c": "/service1/x"}}
        ]))
        .validate()
        .expect("transitive");
        for (pointer, word) in [
            ("service1/x", "starts with /"),
            ("/", "name a target"),
            ("/service1/a~2", "RFC 6901"),
            ("/ghost/x", "names no target"),
        ] {
            let (_, reason) = error(serde_json::json!([
                {"service": "service1"},
                {"service": "carriers", "needs": ["service1"], "with": {"c": pointer}}
            ]));
            assert!(reason.contains(word), "{pointer}: {reason}");
        }
        let (field, _) = error(serde_json::json!([
            {"service": "service1"},
            {"service": "carriers", "needs": ["service1"], "with": {"order_id": "/service1/x"}}
        ]));
        assert!(field.ends_with("with.order_id"));
        let (field, reason) = error(serde_json::json!([
            {"service": "service1"},
            {"service": "carriers", "needs": ["service1"],
             "when": {"field": {"path": "/service1/x", "equals": 1, "exists": true}}}
        ]));
        assert_eq!(field, "routes.order.targets[1].when.field");
        assert!(reason.contains("exactly one"), "{reason}");
    }

    #[test]
    fn an_upstream_placeholder_must_be_given() {
        let mut s = spec(serde_json::json!([
            {"service": "service1"},
            {"service": "carriers", "needs": ["service1"]}
        ]));
        s.services.get_mut("carriers").expect("carriers").upstream = Some(
            serde_json::from_value(serde_json::json!({"url": "http://h/c/{carrier}"}))
                .expect("upstream"),
        );
        match s.validate() {
            Err(Error::Invalid { field, reason }) => {
                assert_eq!(field, "routes.order.targets[1].with");
                assert!(reason.contains("{carrier}"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_hold() {
        let with: serde_json::Map<String, serde_json::Value> = (0..=MAX_WITH)
            .map(|i| (format!("a{i}"), serde_json::json!("/service1/x")))
            .collect();
        let (field, _) = error(serde_json::json!([
            {"service": "service1"},
            {"service": "carriers", "needs": ["service1"], "with": with}
        ]));
        assert_eq!(field, "routes.order.targets[1].with");
        let long = format!("/service1/{}", "x".repeat(MAX_POINTER));
        let (_, reason) = error(serde_json::json!([
            {"service": "service1"},
            {"service": "carriers", "needs": ["service1"], "with": {"a": long}}
        ]));
        assert!(reason.contains("longer than"), "{reason}");
        let many: Vec<u32> = (0..=MAX_IN as u32).collect();
        let (field, _) = error(serde_json::json!([
            {"service": "service1"},
            {"service": "carriers", "when": {"field": {"path": "/service1/x", "in": many}}}
        ]));
        assert_eq!(field, "routes.order.targets[1].when.field.in");
        for bad in ["Upper", "1st", "has-dash", "order_id", ""] {
            let (field, _) = error(serde_json::json!([
                {"service": "service1"},
                {"service": "carriers", "needs": ["service1"], "with": {bad: "/service1/x"}}
            ]));
            assert!(
                field.starts_with("routes.order.targets[1].with"),
                "{bad}: {field}"
            );
        }
        let (field, reason) = error(serde_json::json!([
            {"service": "service1", "when": {"field": {"path": "/service1/x", "exists": true}}}
        ]));
        assert!(
            field.ends_with("when.field.path") && reason.contains("cycle"),
            "{field}: {reason}"
        );
    }

    #[test]
    fn pointers_split_at_the_first_token() {
        let p = split_pointer("/a~1b/c/d").expect("ok");
        assert_eq!(p.target, "a/b");
        assert_eq!(p.rest, "/c/d");
        assert_eq!(split_pointer("/a").expect("ok").rest, "");
    }
}
