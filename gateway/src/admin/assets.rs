//! What the admin listener serves without a token: the web UI (our own HTML, CSS and
//! JavaScript, built into the binary) and the OpenAPI document of both listeners.

/// The OpenAPI document of the public and admin APIs.
pub const OPENAPI: &str = include_str!("../../openapi.json");
/// The UI's page.
pub const UI_HTML: &str = include_str!("../../ui/index.html");
/// The UI's styles.
pub const UI_CSS: &str = include_str!("../../ui/app.css");
/// The UI's script.
pub const UI_JS: &str = include_str!("../../ui/app.js");
/// The Clients page's script (loaded after [`UI_JS`]).
pub const UI_CLIENTS_JS: &str = include_str!("../../ui/clients.js");
