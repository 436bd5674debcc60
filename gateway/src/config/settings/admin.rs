//! `[admin]`: the admin listener and its token (from settings or a file, never logged).

use std::net::SocketAddr;

use busgate_shared::Error;
use serde::{Deserialize, Serialize};

use super::redacted;

/// The admin listener.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token of the admin API, at least [`MIN_ADMIN_TOKEN`] visible ASCII characters.
    /// Without it (and without `token_file`) the admin listener is not served.
    pub token: String,
    /// A file holding the token instead (a mounted secret), read at start; surrounding
    /// whitespace is ignored. Every instance given the same file uses the same token.
    pub token_file: String,
}

// Debug by hand: `{:?}` of the settings shows no secret (NatsSettings' is in busgate_shared,
// CallbackSettings' beside it).

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 32;

impl AdminSettings {
    /// The admin token from `token` or `token_file`, checked; `None` when neither is set.
    pub fn resolve_token(&self) -> Result<Option<String>, Error> {
        let token = match (self.token.is_empty(), self.token_file.is_empty()) {
            (true, true) => return Ok(None),
            (false, false) => {
                return Err(Error::invalid("admin", "set token or token_file, not both"))
            }
            (false, true) => self.token.clone(),
            (true, false) => std::fs::read_to_string(&self.token_file)
                .map_err(|e| {
                    Error::invalid(
                        "admin.token_file",
                        format!("cannot read {}: {}", self.token_file, e.kind()),
                    )
                })?
                .trim()
                .to_owned(),
        };
        let field = if self.token.is_empty() {
            "admin.token_file"
        } else {
            "admin.token"
        };
        if token.len() < MIN_ADMIN_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid(
                field,
                format!("the token must be at least {MIN_ADMIN_TOKEN} visible ASCII characters"),
            ));
        }
        Ok(Some(token))
    }
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: String::new(),
            token_file: String::new(),
        }
    }
}
