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
/// The UI's icon, drawn here: served at `/ui/favicon.svg` (linked from the page) and at
/// `/favicon.ico`, which browsers and tools ask for unprompted.
pub const FAVICON_SVG: &str = include_str!("../../ui/favicon.svg");
/// The icon's content type (an SVG also under `/favicon.ico`: every current browser reads it).
pub const FAVICON_CONTENT_TYPE: &str = "image/svg+xml";
/// The icon never changes within a version: a day in caches.
pub const FAVICON_CACHE: &str = "public, max-age=86400";
/// The Clients page's script (loaded after [`UI_JS`]).
pub const UI_CLIENTS_JS: &str = include_str!("../../ui/clients.js");
/// The services editor's breaker, retry and hedge fields and the breaker column (loaded after
/// [`UI_JS`]).
pub const UI_RESILIENCE_JS: &str = include_str!("../../ui/resilience.js");
/// The composition script: the route editor's graph fields and stages, the try-it's waterfall
/// (loaded after [`UI_JS`]).
pub const UI_GRAPH_JS: &str = include_str!("../../ui/graph.js");
