//! Configuration as code: what applying a file to the store would change, as a [`Plan`] of
//! creates, updates and deletes (each with the revision it was read at, for compare-and-set),
//! and that plan as a readable diff. Pure: no I/O; `busgate config diff / apply / export` and
//! `busgate up --config` read the store through their target and write through it.
//!
//! Rules: an object is compared as its typed document (so formatting never differs); a client
//! whose entry in the file has no `keys` keeps the keys it has in the store (keys are made
//! through the admin API); objects the file does not name are kept unless `prune`; the
//! configuration the plan makes (the file, plus what is kept) is validated whole before any
//! step exists. A diff names clients' keys by id only, never by hash.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use busgate_shared::config::{ClientSpec, ConfigSpec, RouteSpec, ServiceSpec};
use busgate_shared::Error;

use crate::config::snapshot::Snapshot;
use crate::config::store::Kind;

pub use crate::config::store::Stored;

/// One change of a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A new object (its key must still be absent when written).
    Create {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
        /// Its document.
        new: Value,
    },
    /// A changed object (still at `revision` when written).
    Update {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
        /// The revision read.
        revision: u64,
        /// The document read.
        old: Value,
        /// The document written.
        new: Value,
    },
    /// An object the file does not name, with `prune` (still at `revision` when deleted).
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
        /// The revision read.
        revision: u64,
        /// The document read.
        old: Value,
    },
}

impl Step {
    /// The object's kind and name.
    pub fn object(&self) -> (Kind, &str) {
        match self {
            Step::Create { kind, name, .. }
            | Step::Update { kind, name, .. }
            | Step::Delete { kind, name, .. } => (*kind, name),
        }
    }

    /// The object's key (`routes.order`), as errors and the audit trail name it.
    pub fn key(&self) -> String {
        let (kind, name) = self.object();
        kind.key(name)
    }

    /// The revision the object must still have when written (`None`: must not exist).
    pub fn expected(&self) -> Option<u64> {
        match self {
            Step::Create { .. } => None,
            Step::Update { revision, .. } | Step::Delete { revision, .. } => Some(*revision),
        }
    }
}

/// What applying a file changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// In the order they are written: creates and updates of services, routes, clients; then
    /// deletes of clients, routes, services (a watcher sees valid states where possible).
    pub steps: Vec<Step>,
    /// Objects in the store that the file does not name, left alone (without `prune`).
    pub kept: Vec<String>,
    /// Objects the file names that already match.
    pub unchanged: usize,
    /// The configuration the store holds once the plan is applied.
    pub result: ConfigSpec,
}

impl Plan {
    /// Whether applying changes nothing.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

const KINDS: [Kind; 3] = [Kind::Service, Kind::Route, Kind::Client];

/// The typed configuration in `stored`; a document that does not parse is named.
pub fn spec_of(stored: &Stored) -> Result<ConfigSpec, Error> {
    let mut spec = ConfigSpec {
        services: BTreeMap::new(),
        routes: BTreeMap::new(),
        clients: BTreeMap::new(),
    };
    for (key, (_, value)) in stored {
        let bad = |e: serde_json::Error| Error::invalid(key.clone(), e.to_string());
        if let Some(name) = key.strip_prefix("services.") {
            let service: ServiceSpec = serde_json::from_value(value.clone()).map_err(bad)?;
            spec.services.insert(name.to_owned(), service);
        } else if let Some(name) = key.strip_prefix("routes.") {
            let route: RouteSpec = serde_json::from_value(value.clone()).map_err(bad)?;
            spec.routes.insert(name.to_owned(), route);
        } else if let Some(name) = key.strip_prefix("clients.") {
            let client: ClientSpec = serde_json::from_value(value.clone()).map_err(bad)?;
            spec.clients.insert(name.to_owned(), client);
        }
    }
    Ok(spec)
}

/// The documents of one kind, by name.
fn documents(spec: &ConfigSpec, kind: Kind) -> Result<BTreeMap<String, Value>, Error> {
    fn all<T: serde::Serialize>(
        kind: Kind,
        map: &BTreeMap<String, T>,
    ) -> Result<BTreeMap<String, Value>, Error> {
        map.iter()
            .map(|(name, spec)| {
                serde_json::to_value(spec)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::invalid(kind.key(name), e.to_string()))
            })
            .collect()
    }
    match kind {
        Kind::Service => all(kind, &spec.services),
        Kind::Route => all(kind, &spec.routes),
        Kind::Client => all(kind, &spec.clients),
    }
}

/// What applying `file` to `stored` changes; `prune` deletes what the file does not name. The
/// error names the first invalid field of the configuration it would make: nothing is planned.
pub fn plan(stored: &Stored, file: &ConfigSpec, prune: bool) -> Result<Plan, Error> {
    let current = spec_of(stored)?;
    let mut desired = file.clone();
    for (name, client) in &mut desired.clients {
        if client.keys.is_empty() {
            if let Some(now) = current.clients.get(name) {
                client.keys.clone_from(&now.keys);
            }
        }
    }
    let mut result = desired.clone();
    if !prune {
        for (name, s) in &current.services {
            result.services.entry(name.clone()).or_insert(s.clone());
        }
        for (name, r) in &current.routes {
            result.routes.entry(name.clone()).or_insert(r.clone());
        }
        for (name, c) in &current.clients {
            result.clients.entry(name.clone()).or_insert(c.clone());
        }
    }
    Snapshot::compile(result.clone())?;

    let (mut steps, mut deletes, mut kept, mut unchanged) = (Vec::new(), Vec::new(), vec![], 0);
    for kind in KINDS {
        let now = documents(&current, kind)?;
        let want = documents(&desired, kind)?;
        for (name, new) in &want {
            match (now.get(name), stored.get(&kind.key(name))) {
                (Some(old), _) if old == new => unchanged += 1,
                (Some(old), Some((revision, _))) => steps.push(Step::Update {
                    kind,
                    name: name.clone(),
                    revision: *revision,
                    old: old.clone(),
                    new: new.clone(),
                }),
                _ => steps.push(Step::Create {
                    kind,
                    name: name.clone(),
                    new: new.clone(),
                }),
            }
        }
        for (name, old) in now.iter().filter(|(n, _)| !want.contains_key(*n)) {
            let Some((revision, _)) = stored.get(&kind.key(name)) else {
                continue;
            };
            if prune {
                deletes.push(Step::Delete {
                    kind,
                    name: name.clone(),
                    revision: *revision,
                    old: old.clone(),
                });
            } else {
                kept.push(kind.key(name));
            }
        }
    }
    deletes.reverse();
    steps.extend(deletes);
    Ok(Plan {
        steps,
        kept,
        unchanged,
        result,
    })
}

/// A document as `path = value` lines; a client's keys by id only.
fn lines(kind: Kind, doc: &Value) -> BTreeMap<String, String> {
    let mut doc = doc.clone();
    if kind == Kind::Client {
        if let Some(keys) = doc.get_mut("keys").and_then(Value::as_array_mut) {
            for key in keys.iter_mut() {
                let id = key.get("id").cloned().unwrap_or(Value::Null);
                *key = id;
            }
        }
    }
    let mut out = BTreeMap::new();
    flatten("", &doc, &mut out);
    out
}

fn flatten(at: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        Value::Array(items) if items.iter().any(|v| v.is_object() || v.is_array()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{at}[{i}]"), v, out);
            }
        }
        other => {
            out.insert(at.to_owned(), other.to_string());
        }
    }
}

/// The plan as a readable diff: `+` a new object, `~` a changed one, `-` a deleted one, each
/// with the fields that change; then what is kept and how many match. Ends with a newline.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for step in &plan.steps {
        let (kind, _) = step.object();
        let (mark, old, new) = match step {
            Step::Create { new, .. } => ('+', None, Some(new)),
            Step::Update { old, new, .. } => ('~', Some(old), Some(new)),
            Step::Delete { old, .. } => ('-', Some(old), None),
        };
        let _ = writeln!(out, "{mark} {}", step.key());
        let old = old.map(|d| lines(kind, d)).unwrap_or_default();
        let new = new.map(|d| lines(kind, d)).unwrap_or_default();
        let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            match (old.get(path), new.get(path)) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => {
                    if let Some(a) = a {
                        let _ = writeln!(out, "    - {path} = {a}");
                    }
                    if let Some(b) = b {
                        let _ = writeln!(out, "    + {path} = {b}");
                    }
                }
            }
        }
    }
    for key in &plan.kept {
        let _ = writeln!(out, "  {key}: not in the file, kept (--prune deletes it)");
    }
    let _ = writeln!(
        out,
        "{} to change, {} unchanged",
        plan.steps.len(),
        plan.unchanged
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use busgate_shared::config::KeySpec;
    use serde_json::json;

    fn stored(spec: &ConfigSpec) -> Stored {
        let mut out = Stored::new();
        let mut revision = 0;
        for kind in KINDS {
            for (name, doc) in documents(spec, kind).expect("documents") {
                revision += 1;
                out.insert(kind.key(&name), (revision, doc));
            }
        }
        out
    }

    fn key(id: &str) -> KeySpec {
        KeySpec {
            id: id.into(),
            hash: format!("{:0>64}", hex::encode(id)),
            created: String::new(),
        }
    }

    #[test]
    fn the_same_configuration_plans_nothing() {
        let spec = ConfigSpec::builtin();
        let plan = plan(&stored(&spec), &spec, true).expect("plan");
        assert!(plan.is_empty());
        assert_eq!(plan.unchanged, 3);
        assert!(render(&plan).ends_with("0 to change, 3 unchanged\n"));
    }

    #[test]
    fn creates_updates_and_deletes_carry_the_revision_read_in_a_valid_order() {
        let now = ConfigSpec::builtin();
        let mut file = now.clone();
        file.services.remove("service2");
        file.routes
            .get_mut("order")
            .expect("order")
            .targets
            .retain(|t| t.service == "service1");
        file.services
            .insert("billing".into(), ServiceSpec::default());
        let stored = stored(&now);
        let kept = plan(&stored, &file, false).expect("plan");
        assert_eq!(kept.kept, vec!["services.service2".to_owned()]);
        assert!(kept.steps.iter().all(|s| !matches!(s, Step::Delete { .. })));

        let pruned = plan(&stored, &file, true).expect("plan");
        let keys: Vec<(String, Option<u64>)> = pruned
            .steps
            .iter()
            .map(|s| (s.key(), s.expected()))
            .collect();
        let order_rev = stored["routes.order"].0;
        let s2_rev = stored["services.service2"].0;
        assert_eq!(
            keys,
            vec![
                ("services.billing".to_owned(), None),
                ("routes.order".to_owned(), Some(order_rev)),
                ("services.service2".to_owned(), Some(s2_rev)),
            ]
        );
        let text = render(&pruned);
        assert!(
            text.contains("+ services.billing\n    + timeout = \"800ms\""),
            "{text}"
        );
        assert!(text.contains("~ routes.order\n"), "{text}");
        assert!(
            text.contains("    - targets[1].service = \"service2\""),
            "{text}"
        );
        assert!(text.contains("- services.service2\n"), "{text}");
    }

    #[test]
    fn an_invalid_file_plans_nothing_and_names_the_field() {
        let now = ConfigSpec::builtin();
        let mut file = now.clone();
        file.routes.get_mut("order").expect("order").targets[0].service = "ghost".into();
        let Err(Error::Invalid { field, .. }) = plan(&stored(&now), &file, false) else {
            panic!("invalid");
        };
        assert_eq!(field, "routes.order.targets[0].service");
        // What is kept counts: pruning a service a kept route needs is refused too.
        let mut only_route = now.clone();
        only_route.services.clear();
        assert!(plan(&stored(&now), &only_route, true).is_err());
        assert!(plan(&stored(&now), &only_route, false).is_ok());
    }

    #[test]
    fn a_client_without_keys_in_the_file_keeps_its_keys_and_a_diff_shows_ids_only() {
        let mut now = ConfigSpec::builtin();
        now.clients.insert(
            "shop".into(),
            ClientSpec {
                keys: vec![key("k1"), key("k2")],
                ..ClientSpec::default()
            },
        );
        let mut file = now.clone();
        file.clients.get_mut("shop").expect("shop").keys.clear();
        assert!(plan(&stored(&now), &file, true).expect("plan").is_empty());

        file.clients.get_mut("shop").expect("shop").keys = vec![key("k1")];
        file.clients.get_mut("shop").expect("shop").description = "the shop".into();
        let plan = plan(&stored(&now), &file, true).expect("plan");
        let text = render(&plan);
        assert!(text.contains("    - keys = [\"k1\",\"k2\"]"), "{text}");
        assert!(text.contains("    + keys = [\"k1\"]"), "{text}");
        assert!(text.contains("    + description = \"the shop\""), "{text}");
        assert!(
            !text.contains(&format!("{:0>64}", hex::encode("k1"))),
            "a hash in {text}"
        );
    }

    #[test]
    fn a_stored_document_that_does_not_parse_is_named() {
        let mut s = stored(&ConfigSpec::builtin());
        s.insert("routes.bad".into(), (9, json!({"nope": 1})));
        let Err(Error::Invalid { field, .. }) = plan(&s, &ConfigSpec::builtin(), false) else {
            panic!("invalid");
        };
        assert_eq!(field, "routes.bad");
    }
}
