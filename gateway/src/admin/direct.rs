//! Configuration written straight to the store, not through the admin API: the NATS
//! [`Target`] of `busgate config apply` (without `--admin`) and of `busgate up --config`.
//! Every write is a compare-and-set through [`ConfigStore`], and an audit event
//! ([`audit::record_direct`]); the KV history keeps each revision as for any write.

use busgate_shared::nats::NatsSettings;

use crate::admin::audit::{self, Change};
use crate::config::apply::{ApplyError, Target};
use crate::config::plan::{Step, Stored};
use crate::config::store::{ConfigStore, Kind};
use crate::error::{ErrorKind, GatewayError};

/// The configuration store, reached over NATS.
#[derive(Clone)]
pub struct Direct {
    store: ConfigStore,
}

impl Direct {
    /// Connects with `nats` settings and opens the store (`replicas` as the gateway's
    /// `jobs.replicas`).
    pub async fn connect(nats: &NatsSettings, replicas: usize) -> Result<Direct, ApplyError> {
        // Connected before any store request: credentials the server refuses are that error
        // at once, not a JetStream request timing out behind a client retrying them.
        let client = busgate_shared::nats::connect_now(
            nats,
            "busgate config",
            busgate_shared::nats::CONNECT_NOW_WITHIN,
        )
        .await
        .map_err(unreachable)?;
        Self::open(&client, replicas).await
    }

    /// The store on an open connection.
    pub async fn open(nats: &async_nats::Client, replicas: usize) -> Result<Direct, ApplyError> {
        let store = ConfigStore::open(nats, replicas).await.map_err(|e| {
            ApplyError::Unavailable(format!("cannot open the configuration store: {e}"))
        })?;
        Ok(Direct { store })
    }
}

/// What a failed connection is for `busgate config`: credentials the server refused are
/// named as such (never shown: the URL is redacted and the settings' files are not read out).
fn unreachable(e: busgate_shared::Error) -> ApplyError {
    use async_nats::ConnectErrorKind::{Authentication, AuthorizationViolation};
    match &e {
        busgate_shared::Error::Connect { url, source }
            if matches!(source.kind(), AuthorizationViolation | Authentication) =>
        {
            ApplyError::Unavailable(format!(
                "nats at {url} refused the credentials ({}): check the user and password of \
                 nats.url, nats.creds_file or nats.nkey_file",
                source.kind()
            ))
        }
        _ => ApplyError::Unavailable(e.to_string()),
    }
}

/// A store error of a write: a lost compare-and-set is a conflict on the object.
fn lost(e: GatewayError, kind: Kind, name: &str) -> ApplyError {
    match e.kind {
        ErrorKind::Exists(_) | ErrorKind::Stale { .. } => ApplyError::Conflict {
            object: kind.key(name),
            detail: String::new(),
        },
        _ => ApplyError::Failed(e.to_string()),
    }
}

impl Target for Direct {
    async fn read(&self) -> Result<Stored, ApplyError> {
        self.store
            .objects()
            .await
            .map_err(|e| ApplyError::Failed(e.to_string()))
    }

    async fn revision(&self, step: &Step) -> Result<Option<u64>, ApplyError> {
        let (kind, name) = step.object();
        let current = self.store.get(kind, name).await;
        Ok(current
            .map_err(|e| ApplyError::Failed(e.to_string()))?
            .map(|(revision, _)| revision))
    }

    /// Creates (`expected` `None`) or replaces an object, compare-and-set.
    async fn put(
        &self,
        kind: Kind,
        name: &str,
        doc: &serde_json::Value,
        expected: Option<u64>,
    ) -> Result<u64, ApplyError> {
        let mut change = Change::of(kind, name);
        change.old = expected;
        let written = self.store.write_if(kind, name, doc, expected).await;
        change.new = written.as_ref().ok().copied();
        let operation = if expected.is_some() {
            "update"
        } else {
            "create"
        };
        audit::record_direct(operation, &change, written.is_ok());
        written.map_err(|e| lost(e, kind, name))
    }

    /// Deletes an object still at `expected`.
    async fn delete(&self, kind: Kind, name: &str, expected: u64) -> Result<(), ApplyError> {
        let mut change = Change::of(kind, name);
        change.old = Some(expected);
        let deleted = self.store.delete(kind, name, Some(expected)).await;
        audit::record_direct("delete", &change, deleted.is_ok());
        deleted.map_err(|e| lost(e, kind, name))
    }
}
