//! The run of a composed route's graph: which targets can be decided now (every target they
//! wait for has settled), and what each comes to: asked with its attributes (JSON Pointers
//! resolved over the data gathered so far), or skipped with a reason (`condition`,
//! `missing_value`, `dependency_failed`).
//!
//! Pure: it reads the gather's results through a function and never publishes or waits; the
//! scatter asks it after every settled target and publishes what it decides ([`Run::next`]).
//! A source's data is parsed once, and only when a pointer reads it.
//!
//! May use: `config::graph` (the compiled graph).

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::config::graph::{Graph, Location};

/// The longest attribute value (a string from another service's answer) sent on; a longer
/// one counts as missing (`missing_value`): it would only make an oversized URL.
pub const MAX_VALUE: usize = 1024;

/// Why a target was not asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its `when` did not hold (on the request, or on the answers).
    Condition,
    /// A `with` pointer found nothing (or `null`, or an empty string).
    MissingValue,
    /// A target it waits for did not answer `ok`.
    DependencyFailed,
}

impl Skip {
    /// The reason as `sources` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Condition => "condition",
            Skip::MissingValue => "missing_value",
            Skip::DependencyFailed => "dependency_failed",
        }
    }
}

/// What a target has come to so far, as the graph reads it.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// Not settled yet.
    Open,
    /// Answered `ok` with this data (`None` for `null`).
    Ok(Option<&'a Bytes>),
    /// Settled without data (failed, timed out, not found, skipped, …).
    Failed,
}

/// What the graph decided for a target.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Ask it now, with these attributes.
    Ask {
        /// The target.
        index: usize,
        /// `(name, value)`, in name order.
        attributes: Vec<(Box<str>, Value)>,
    },
    /// Do not ask it.
    Skip {
        /// The target.
        index: usize,
        /// Why.
        reason: Skip,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Decided,
}

/// One request's run through a graph. Owns what later stages' requests need of the request
/// (the borrowed request is gone by then).
#[derive(Debug)]
pub struct Run {
    /// The request id.
    pub request_id: Box<str>,
    /// The order id.
    pub order_id: Box<str>,
    /// The client.
    pub client: Box<str>,
    /// The traceparent sent on.
    pub traceparent: Box<str>,
    /// The request's deadline: the route's, shortened by the client's `Busgate-Timeout`.
    pub deadline: Duration,
    state: Vec<State>,
    starts: Vec<Option<Duration>>,
    parsed: Vec<Option<Option<Value>>>,
}

impl Run {
    /// A run over `targets` targets for the request named by the rest, ending by `deadline`.
    pub fn new(
        targets: usize,
        request_id: &str,
        order_id: &str,
        client: &str,
        traceparent: &str,
        deadline: Duration,
    ) -> Self {
        Run {
            request_id: request_id.into(),
            order_id: order_id.into(),
            client: client.into(),
            traceparent: traceparent.into(),
            deadline,
            state: vec![State::Waiting; targets],
            starts: vec![None; targets],
            parsed: vec![None; targets],
        }
    }

    /// Marks `index` decided outside the graph (its condition on the request did not hold).
    pub fn decided(&mut self, index: usize) {
        if let Some(s) = self.state.get_mut(index) {
            *s = State::Decided;
        }
    }

    /// Records that `index` was asked `at` after the gather started.
    pub fn started(&mut self, index: usize, at: Duration) {
        if let Some(s) = self.starts.get_mut(index) {
            *s = Some(at);
        }
    }

    /// When each target was asked (after the gather started); `None`: never.
    pub fn starts(&self) -> &[Option<Duration>] {
        &self.starts
    }

    /// Decides every waiting target whose needs have all settled (`seen` says what each
    /// target has come to), appending the decisions to `out`. Skips settle targets too: call
    /// again after settling them, until nothing more is decided.
    pub fn next<'a>(
        &mut self,
        graph: &Graph,
        seen: impl Fn(usize) -> Seen<'a>,
        out: &mut Vec<Decision>,
    ) {
        for index in 0..self.state.len() {
            if self.state[index] != State::Waiting {
                continue;
            }
            let needs = graph.needs.get(index).map_or(&[][..], Vec::as_slice);
            let mut failed = false;
            let mut open = false;
            for &j in needs {
                match seen(j) {
                    Seen::Open => open = true,
                    Seen::Failed => failed = true,
                    Seen::Ok(_) => {}
                }
            }
            if open {
                continue;
            }
            self.state[index] = State::Decided;
            if failed {
                out.push(Decision::Skip {
                    index,
                    reason: Skip::DependencyFailed,
                });
                continue;
            }
            if let Some(field) = graph.field.get(index).and_then(Option::as_ref) {
                let value = self.resolve(&field.at, &seen);
                if !field.test.passes(value) {
                    out.push(Decision::Skip {
                        index,
                        reason: Skip::Condition,
                    });
                    continue;
                }
            }
            let with = graph.with.get(index).map_or(&[][..], Vec::as_slice);
            let mut attributes = Vec::with_capacity(with.len());
            let mut missing = false;
            for attribute in with {
                match self.resolve(&attribute.at, &seen) {
                    Some(Value::String(s)) if s.is_empty() || s.len() > MAX_VALUE => {
                        missing = true;
                    }
                    Some(value @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
                        attributes.push((attribute.name.clone(), value.clone()));
                    }
                    // Nothing, null, or not a scalar: nothing to put in a URL.
                    _ => missing = true,
                }
            }
            out.push(if missing {
                Decision::Skip {
                    index,
                    reason: Skip::MissingValue,
                }
            } else {
                Decision::Ask { index, attributes }
            });
        }
    }

    /// The value at `at` in the data gathered so far (parsing the source's data once).
    fn resolve<'a>(&mut self, at: &Location, seen: &impl Fn(usize) -> Seen<'a>) -> Option<&Value> {
        let slot = self.parsed.get_mut(at.target)?;
        if slot.is_none() {
            *slot = Some(match seen(at.target) {
                Seen::Ok(Some(bytes)) => serde_json::from_slice(bytes).ok(),
                Seen::Ok(None) => Some(Value::Null),
                Seen::Open | Seen::Failed => None,
            });
        }
        slot.as_ref()?.as_ref()?.pointer(&at.rest)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use busgate_shared::config::RouteSpec;
    use serde_json::json;
    use tokio::time::Instant;

    use super::*;
    use crate::config::graph::compile;
    use crate::gather::scatter::{Book, SourceResult, Step};

    const MS: Duration = Duration::from_millis(1);

    fn graph(targets: serde_json::Value) -> Graph {
        let route: RouteSpec = serde_json::from_value(json!({
            "bindings": [{"method": "GET", "path": "/x/{order_id}"}],
            "targets": targets
        }))
        .expect("route");
        compile(&route).expect("a graph")
    }

    fn ok(json: &'static str) -> SourceResult {
        SourceResult::Ok {
            data: Some(Bytes::from_static(json.as_bytes())),
            elapsed: MS,
        }
    }

    fn seen(book: &Book, i: usize) -> Seen<'_> {
        match book.result(i) {
            None => Seen::Open,
            Some(SourceResult::Ok { data, .. }) => Seen::Ok(data.as_ref()),
            Some(_) => Seen::Failed,
        }
    }

    fn decide(run: &mut Run, g: &Graph, book: &Book) -> Vec<Decision> {
        let mut out = Vec::new();
        run.next(g, |i| seen(book, i), &mut out);
        out
    }

    fn run(n: usize) -> Run {
        Run::new(n, "r", "A1", "c", "t", Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependent_is_asked_with_values_from_its_dependency() {
        let g = graph(json!([
            {"service": "service1"},
            {"service": "service3", "needs": ["service1"],
             "with": {"customer": "/service1/customer/id", "n": "/service1/n"}}
        ]));
        let mut book = Book::new(Instant::now(), [(true, 800 * MS), (true, 1000 * MS)]);
        book.hold(1);
        let mut r = run(2);
        let first = decide(&mut r, &g, &book);
        assert_eq!(
            first,
            vec![Decision::Ask {
                index: 0,
                attributes: vec![]
            }]
        );
        assert!(decide(&mut r, &g, &book).is_empty(), "service3 waits");
        tokio::time::advance(30 * MS).await;
        book.settle(0, ok(r#"{"customer":{"id":"C-7"},"n":2}"#));
        assert_eq!(
            decide(&mut r, &g, &book),
            vec![Decision::Ask {
                index: 1,
                attributes: vec![("customer".into(), json!("C-7")), ("n".into(), json!(2))]
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn skips_carry_their_reasons() {
        let g = graph(json!([
            {"service": "a", "required": false},
            {"service": "b", "needs": ["a"]},
            {"service": "c", "needs": ["d"], "with": {"x": "/d/nope"}},
            {"service": "d"},
            {"service": "e", "when": {"field": {"path": "/d/status", "equals": "shipped"}}},
            {"service": "f", "needs": ["d"], "with": {"x": "/d/empty"}}
        ]));
        let mut book = Book::new(Instant::now(), [(false, 800 * MS); 6]);
        let mut r = run(6);
        let roots = decide(&mut r, &g, &book);
        assert_eq!(roots.len(), 2, "a and d: {roots:?}");
        book.settle(0, SourceResult::Timeout { after: 800 * MS });
        book.settle(3, ok(r#"{"status":"paid","empty":""}"#));
        let mut next = decide(&mut r, &g, &book);
        next.sort_by_key(|d| match d {
            Decision::Ask { index, .. } | Decision::Skip { index, .. } => *index,
        });
        let reasons: Vec<(usize, Skip)> = next
            .iter()
            .filter_map(|d| match d {
                Decision::Skip { index, reason } => Some((*index, *reason)),
                Decision::Ask { .. } => None,
            })
            .collect();
        assert_eq!(
            reasons,
            vec![
                (1, Skip::DependencyFailed),
                (2, Skip::MissingValue),
                (4, Skip::Condition),
                (5, Skip::MissingValue),
            ]
        );
        assert_eq!(Skip::MissingValue.as_str(), "missing_value");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependent_times_out_from_its_own_start_within_the_route_deadline() {
        // Route deadline 1000 ms; the dependent's own timeout 800 ms.
        let mut book = Book::new(Instant::now(), [(true, 800 * MS), (false, 1000 * MS)]);
        book.hold(1);
        tokio::time::advance(100 * MS).await;
        assert_eq!(book.settle(0, ok("{}")), Some(Step::Continue));
        book.arm(1, 100 * MS, 800 * MS);
        assert_eq!(book.next_deadline(), Some(book.started() + 900 * MS));
        tokio::time::advance(800 * MS).await;
        assert_eq!(book.expire(Instant::now()), Step::Done);
        let outcome = book.finish();
        assert_eq!(
            outcome.results[1],
            SourceResult::Timeout { after: 800 * MS }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_stage_leaves_the_second_a_timeout_at_the_deadline() {
        let mut book = Book::new(Instant::now(), [(false, 1000 * MS), (false, 1000 * MS)]);
        book.hold(1);
        tokio::time::advance(700 * MS).await;
        book.settle(0, ok("{}"));
        // Started at 700 ms with 800 ms of its own: the route's deadline (1000 ms) ends it.
        book.arm(1, 700 * MS, 800 * MS);
        assert_eq!(book.next_deadline(), Some(book.started() + 1000 * MS));
        tokio::time::advance(300 * MS).await;
        assert_eq!(book.expire(Instant::now()), Step::Done);
        assert_eq!(
            book.finish().results[1],
            SourceResult::Timeout { after: 300 * MS }
        );
        // Never started: it times out at the deadline, having waited nothing.
        let mut book = Book::new(Instant::now(), [(false, 1000 * MS), (false, 1000 * MS)]);
        book.hold(1);
        tokio::time::advance(1000 * MS).await;
        assert_eq!(book.expire(Instant::now()), Step::Done);
        assert_eq!(
            book.finish().results[1],
            SourceResult::Timeout {
                after: Duration::ZERO
            }
        );
    }

    #[test]
    fn only_short_scalars_become_attributes() {
        let g = graph(json!([
            {"service": "a"},
            {"service": "b", "needs": ["a"], "with": {"x": "/a/obj"}},
            {"service": "c", "needs": ["a"], "with": {"x": "/a/long"}},
            {"service": "d", "needs": ["a"], "with": {"x": "/a/null"}},
            {"service": "e", "needs": ["a"], "with": {"x": "/a/yes", "y": "/a/short"}}
        ]));
        let mut book = Book::new(Instant::now(), [(true, 800 * MS); 5]);
        let mut r = run(5);
        decide(&mut r, &g, &book);
        let long = "x".repeat(MAX_VALUE + 1);
        let data = json!({"obj": {"k": 1}, "long": long, "null": null, "yes": true, "short": "s"});
        book.settle(
            0,
            SourceResult::Ok {
                data: Some(Bytes::from(data.to_string())),
                elapsed: MS,
            },
        );
        let decisions = decide(&mut r, &g, &book);
        let skipped: Vec<usize> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Skip {
                    index,
                    reason: Skip::MissingValue,
                } => Some(*index),
                _ => None,
            })
            .collect();
        assert_eq!(skipped, vec![1, 2, 3]);
        assert!(decisions.contains(&Decision::Ask {
            index: 4,
            attributes: vec![("x".into(), json!(true)), ("y".into(), json!("s"))]
        }));
    }

    #[test]
    fn data_is_parsed_once_and_bad_data_finds_nothing() {
        let g = graph(json!([
            {"service": "a"},
            {"service": "b", "needs": ["a"], "with": {"x": "/a/x"}}
        ]));
        let mut book = Book::new(Instant::now(), [(true, 800 * MS); 2]);
        let mut r = run(2);
        decide(&mut r, &g, &book);
        book.settle(0, ok("not json"));
        assert_eq!(
            decide(&mut r, &g, &book),
            vec![Decision::Skip {
                index: 1,
                reason: Skip::MissingValue
            }]
        );
    }
}
