//! `[log]` and `[metrics]`: how the process logs and where `/metrics` is served.

use busgate_shared::runtime::LogFormat;
use serde::{Deserialize, Serialize};

/// Where `/metrics` is served.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// The listener that serves `/metrics`; the other one answers 404 there.
    pub listener: MetricsListener,
}

/// A listener, as `metrics.listener` names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsListener {
    /// The public listener (`http.listen`): where scrapers find it without extra setup.
    #[default]
    Public,
    /// The admin listener (`admin.listen`), without the admin token.
    Admin,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `busgate=debug` (RUST_LOG wins when set).
    pub level: String,
    /// One access line per public request (target `busgate::access`): method, route,
    /// status, client, request id, trace id, elapsed time. Off by default; on in `busgate up`.
    pub access: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
            access: false,
        }
    }
}
