//! What every admin handler holds: the gateway's shared state and the admin token's digest.

use std::sync::Arc;

use crate::edge::state::AppState;

/// State of the admin router.
#[derive(Clone)]
pub struct AdminState {
    /// The state the public edge runs on.
    pub(crate) app: AppState,
    /// SHA-256 of the token: compared in constant time, never the token itself.
    pub(crate) token_hash: Arc<[u8; 32]>,
}
