//! Applying a configuration file to the store: [`apply`] plans it (see [`plan`]), checks
//! every object's revision again, then writes each change compare-and-set through a
//! [`Target`]; a write that loses its race stops the apply, names the object, and the changes
//! written before it are undone (each again on its own revision). So an apply is all or
//! nothing unless a second writer also touches what it is undoing.
//!
//! The targets: NATS directly (`crate::admin::direct`), or a gateway's admin API (in the
//! binary, `busgate config --admin`).

use std::future::Future;

use busgate_shared::config::ConfigSpec;

use crate::config::plan::{self, Plan, Step, Stored};
use crate::config::store::Kind;
use crate::error::{EXIT_BAD_SETTINGS, EXIT_SOFTWARE, EXIT_UNAVAILABLE};

/// Exit code when an object changed while an apply was checking or writing (EX_TEMPFAIL: run
/// it again).
pub const EXIT_CONFLICT: u8 = 75;

/// Why reading or applying a configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The file, the settings, or the configuration they make is invalid: nothing written.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The store cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// An object changed meanwhile.
    #[error("{object} changed while applying (another writer): {detail}")]
    Conflict {
        /// `routes.order`.
        object: String,
        /// What became of the changes written before.
        detail: String,
    },
    /// Anything else (the store refused a write, an answer that does not parse).
    #[error("{0}")]
    Failed(String),
}

impl ApplyError {
    /// The exit code of this failure: 64 invalid, 69 unreachable, 75 conflict, else 70.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApplyError::Invalid(_) => EXIT_BAD_SETTINGS,
            ApplyError::Unavailable(_) => EXIT_UNAVAILABLE,
            ApplyError::Conflict { .. } => EXIT_CONFLICT,
            ApplyError::Failed(_) => EXIT_SOFTWARE,
        }
    }
}

impl From<busgate_shared::Error> for ApplyError {
    fn from(e: busgate_shared::Error) -> Self {
        ApplyError::Invalid(e.to_string())
    }
}

/// A store that a plan is read from and written to, one compare-and-set at a time.
pub trait Target: Sync {
    /// Every object with its revision.
    fn read(&self) -> impl Future<Output = Result<Stored, ApplyError>> + Send;

    /// Refuses a plan this target cannot carry out, before anything is written.
    fn check(&self, plan: &Plan) -> Result<(), ApplyError> {
        let _ = plan;
        Ok(())
    }

    /// The step's object's current revision (`None`: absent).
    fn revision(&self, step: &Step)
        -> impl Future<Output = Result<Option<u64>, ApplyError>> + Send;

    /// Creates (`expected` `None`) or replaces an object, compare-and-set; the revision
    /// written. A lost race is [`ApplyError::Conflict`].
    fn put(
        &self,
        kind: Kind,
        name: &str,
        doc: &serde_json::Value,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<u64, ApplyError>> + Send;

    /// Deletes an object still at `expected`. A lost race is [`ApplyError::Conflict`].
    fn delete(
        &self,
        kind: Kind,
        name: &str,
        expected: u64,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Writes one step if its object is still at [`Step::expected`]; the revision written
    /// (`None` for a delete). A lost race is [`ApplyError::Conflict`].
    fn write(&self, step: &Step) -> impl Future<Output = Result<Option<u64>, ApplyError>> + Send {
        async move {
            match step {
                Step::Create { kind, name, new } => {
                    self.put(*kind, name, new, None).await.map(Some)
                }
                Step::Update {
                    kind,
                    name,
                    revision,
                    new,
                    ..
                } => self.put(*kind, name, new, Some(*revision)).await.map(Some),
                Step::Delete {
                    kind,
                    name,
                    revision,
                    ..
                } => self.delete(*kind, name, *revision).await.map(|()| None),
            }
        }
    }

    /// Undoes a step that wrote `written`, if the object is still at that revision.
    fn undo(
        &self,
        step: &Step,
        written: Option<u64>,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send {
        async move {
            match (step, written) {
                (Step::Create { kind, name, .. }, Some(revision)) => {
                    self.delete(*kind, name, revision).await
                }
                (
                    Step::Update {
                        kind, name, old, ..
                    },
                    Some(revision),
                ) => self.put(*kind, name, old, Some(revision)).await.map(|_| ()),
                (
                    Step::Delete {
                        kind, name, old, ..
                    },
                    _,
                ) => self.put(*kind, name, old, None).await.map(|_| ()),
                _ => Ok(()),
            }
        }
    }
}

/// Plans `spec` against the store (`prune`: delete what it does not name) and, unless
/// `dry_run`, applies it; returns the plan.
pub async fn apply<T: Target>(
    target: &T,
    spec: &ConfigSpec,
    prune: bool,
    dry_run: bool,
) -> Result<Plan, ApplyError> {
    let plan = plan::plan(&target.read().await?, spec, prune)?;
    if dry_run || plan.is_empty() {
        return Ok(plan);
    }
    target.check(&plan)?;
    for step in &plan.steps {
        let now = target.revision(step).await?;
        if now != step.expected() {
            return Err(ApplyError::Conflict {
                object: step.key(),
                detail: format!(
                    "read at {}, now {}; nothing was written",
                    revision_text(step.expected()),
                    revision_text(now)
                ),
            });
        }
    }
    let mut done = Vec::new();
    for step in &plan.steps {
        match target.write(step).await {
            Ok(revision) => done.push((step, revision)),
            Err(e) => {
                let undone = undo(target, &done).await;
                return Err(match e {
                    ApplyError::Conflict { object, .. } => ApplyError::Conflict {
                        object,
                        detail: undone,
                    },
                    other => ApplyError::Failed(format!("{other}; {undone}")),
                });
            }
        }
    }
    Ok(plan)
}

/// Undoes written steps, last first; says what it did.
async fn undo<T: Target>(target: &T, done: &[(&Step, Option<u64>)]) -> String {
    if done.is_empty() {
        return "nothing was written".into();
    }
    let mut failed = Vec::new();
    for (step, revision) in done.iter().rev() {
        if let Err(e) = target.undo(step, *revision).await {
            tracing::warn!(object = %step.key(), error = %e, "cannot undo a change of this apply");
            failed.push(step.key());
        }
    }
    if failed.is_empty() {
        format!("the {} changes written before it were undone", done.len())
    } else {
        format!("these changes written before it could not be undone: {failed:?}")
    }
}

fn revision_text(revision: Option<u64>) -> String {
    revision.map_or_else(|| "absent".to_owned(), |r| format!("revision {r}"))
}
