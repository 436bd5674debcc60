//! A composed route's graph as the snapshot compiles it: which targets each one waits for,
//! the stages, the attributes it is given (JSON Pointers split at the target they name) and
//! its condition on the answers. Plain data: the run of a graph is `gather::graph`'s.
//!
//! A route without `needs` (nor `when.field`) compiles to no graph at all, and runs exactly as
//! before.

use busgate_shared::compose::{needs_of, split_pointer, FieldCondition};
use busgate_shared::config::RouteSpec;
use serde_json::Value;

/// The graph of a composed route.
#[derive(Debug)]
pub struct Graph {
    /// Per target: the targets it waits for (indices).
    pub needs: Vec<Vec<usize>>,
    /// Per target: its stage (0: waits for nobody; else one more than its latest need's).
    pub stages: Vec<usize>,
    /// Per target: the attributes it is given, in name order.
    pub with: Vec<Vec<Attribute>>,
    /// Per target: its condition on the answers.
    pub field: Vec<Option<FieldTest>>,
    /// Per target: whether a pointer reads its data (only those answers are parsed).
    pub read: Vec<bool>,
}

/// `with.<name> = <pointer>`, compiled.
#[derive(Debug)]
pub struct Attribute {
    /// The attribute's name.
    pub name: Box<str>,
    /// Where its value is.
    pub at: Location,
}

/// A JSON Pointer into the data gathered so far: a target, and a pointer into its data.
#[derive(Debug)]
pub struct Location {
    /// The target (index) whose data it reads.
    pub target: usize,
    /// The pointer into that data (`""`: all of it).
    pub rest: Box<str>,
}

/// `when.field`, compiled.
#[derive(Debug)]
pub struct FieldTest {
    /// The value read.
    pub at: Location,
    /// What it must be.
    pub test: Test,
}

/// What a `when.field` value must be.
#[derive(Debug)]
pub enum Test {
    /// Equal to this.
    Equals(Value),
    /// One of these.
    In(Vec<Value>),
    /// Present and not null (`true`) or absent or null (`false`).
    Exists(bool),
}

impl Test {
    /// Whether `value` (`None`: the pointer found nothing) passes.
    pub fn passes(&self, value: Option<&Value>) -> bool {
        let value = value.filter(|v| !v.is_null());
        match self {
            Test::Equals(expected) => value == Some(expected),
            Test::In(list) => value.is_some_and(|v| list.contains(v)),
            Test::Exists(wanted) => value.is_some() == *wanted,
        }
    }
}

/// The graph of `route` (validated), or `None` when no target waits for another.
pub fn compile(route: &RouteSpec) -> Option<Graph> {
    let waits = |t: &busgate_shared::config::TargetSpec| {
        !t.needs.is_empty() || t.when.as_ref().is_some_and(|w| w.field.is_some())
    };
    if !route.targets.iter().any(waits) {
        return None;
    }
    let position = |name: &str| route.targets.iter().position(|t| t.name() == name);
    let locate = |pointer: &str| -> Option<Location> {
        let p = split_pointer(pointer).ok()?;
        Some(Location {
            target: position(&p.target)?,
            rest: p.rest.into(),
        })
    };
    let nodes: Vec<_> = route.targets.iter().map(|t| t.node(&[])).collect();
    let needs = needs_of(&nodes);
    let stages = stages(&needs);
    let mut read = vec![false; route.targets.len()];
    let with: Vec<Vec<Attribute>> = route
        .targets
        .iter()
        .map(|t| {
            t.with
                .iter()
                .filter_map(|(name, pointer)| {
                    let at = locate(pointer)?;
                    read[at.target] = true;
                    Some(Attribute {
                        name: name.as_str().into(),
                        at,
                    })
                })
                .collect()
        })
        .collect();
    let field = route
        .targets
        .iter()
        .map(|t| {
            let FieldCondition {
                path,
                equals,
                one_of,
                exists,
            } = t.when.as_ref()?.field.as_ref()?;
            let at = locate(path)?;
            read[at.target] = true;
            let test = match (equals, one_of, exists) {
                (Some(v), _, _) => Test::Equals(v.clone()),
                (_, Some(list), _) => Test::In(list.clone()),
                (_, _, Some(e)) => Test::Exists(*e),
                _ => return None,
            };
            Some(FieldTest { at, test })
        })
        .collect();
    Some(Graph {
        needs,
        stages,
        with,
        field,
        read,
    })
}

/// The stage of each target of an acyclic graph.
fn stages(needs: &[Vec<usize>]) -> Vec<usize> {
    let mut stage: Vec<Option<usize>> = vec![None; needs.len()];
    // At most n rounds for n targets in an acyclic graph.
    for _ in 0..=needs.len() {
        let mut changed = false;
        for i in 0..needs.len() {
            if stage[i].is_some() {
                continue;
            }
            let known: Option<Vec<usize>> = needs[i].iter().map(|&j| stage[j]).collect();
            if let Some(known) = known {
                stage[i] = Some(known.into_iter().max().map_or(0, |s| s + 1));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    stage.into_iter().map(|s| s.unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_contract_example_compiles_to_two_stages() {
        let route: RouteSpec = serde_json::from_value(json!({
            "bindings": [{"method": "GET", "path": "/x/{order_id}"}],
            "targets": [
                {"service": "service1"},
                {"service": "carriers", "as": "carrier", "needs": ["service2"],
                 "with": {"carrier": "/service2/carrier"},
                 "when": {"field": {"path": "/service1/status", "in": ["shipped", "delivered"]}}},
                {"service": "service2", "required": false}
            ]
        }))
        .expect("route");
        let g = compile(&route).expect("a graph");
        assert_eq!(g.needs, vec![vec![], vec![2, 0], vec![]]);
        assert_eq!(g.stages, vec![0, 1, 0]);
        assert_eq!(g.read, vec![true, false, true]);
        assert_eq!(g.with[1][0].at.target, 2);
        assert_eq!(&*g.with[1][0].at.rest, "/carrier");
        let test = &g.field[1].as_ref().expect("field").test;
        assert!(test.passes(Some(&json!("shipped"))));
        assert!(!test.passes(Some(&json!("paid"))));
        assert!(!test.passes(None));
        assert!(Test::Exists(false).passes(Some(&Value::Null)));
        assert!(Test::Exists(true).passes(Some(&json!(0))));
        assert!(Test::Equals(json!(1)).passes(Some(&json!(1))));
        let plain: RouteSpec = serde_json::from_value(json!({
            "bindings": [{"method": "GET", "path": "/x/{order_id}"}],
            "targets": [{"service": "service1"}, {"service": "service2"}]
        }))
        .expect("route");
        assert!(compile(&plain).is_none(), "no needs, no graph");
    }

    #[test]
    fn stages_follow_the_longest_chain() {
        assert_eq!(
            stages(&[vec![], vec![0], vec![0], vec![1, 2], vec![]]),
            vec![0, 1, 1, 2, 0]
        );
    }
}
