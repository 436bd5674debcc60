//! A configuration file: the `[services.*]`, `[routes.*]` and `[clients.*]` of a settings file,
//! read for `busgate config diff / apply` and `busgate up --config`, and written by
//! `busgate config export` (TOML, or JSON) in the same format. The file is read as it is: no
//! defaults (a file without `[routes]` names no route) and no `BUSGATE_…` variables. Any other
//! section of a settings file may be there and is checked like the gateway checks it, but is
//! not part of the configuration.

use std::path::Path;

use busgate_shared::config::ConfigSpec;
use busgate_shared::Error;

use crate::config::settings::Settings;

/// The configuration in the TOML `text` (`what` names it in errors).
pub fn parse(text: &str, what: &str) -> Result<ConfigSpec, Error> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| Error::invalid(what, e.message().to_owned()))?;
    let has = |key: &str| table.contains_key(key);
    let (services, routes, clients) = (has("services"), has("routes"), has("clients"));
    let settings: Settings = table
        .try_into()
        .map_err(|e: toml::de::Error| Error::invalid(what, e.message().to_owned()))?;
    let spec = ConfigSpec {
        services: if services {
            settings.services
        } else {
            Default::default()
        },
        routes: if routes {
            settings.routes
        } else {
            Default::default()
        },
        clients: if clients {
            settings.clients
        } else {
            Default::default()
        },
    };
    // Names are checked here too: a plan validates the whole configuration it makes, which
    // may keep objects of the store that the file does not name.
    for (kind, names) in [
        ("services", spec.services.keys().collect::<Vec<_>>()),
        ("routes", spec.routes.keys().collect()),
        ("clients", spec.clients.keys().collect()),
    ] {
        for name in names {
            busgate_shared::validate::name(&format!("{kind}.{name}"), name)?;
        }
    }
    Ok(spec)
}

/// The configuration in the file at `path`.
pub fn load(path: &Path) -> Result<ConfigSpec, Error> {
    let what = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(what.clone(), format!("cannot read: {e}")))?;
    parse(&text, &what)
}

/// The configuration as the TOML file `apply` takes.
pub fn to_toml(spec: &ConfigSpec) -> Result<String, Error> {
    toml::to_string(spec).map_err(|e| Error::invalid("export", e.to_string()))
}

/// The configuration as JSON (what `GET /admin/v1/config` answers; `apply` takes it as TOML).
pub fn to_json(spec: &ConfigSpec) -> Result<String, Error> {
    serde_json::to_string_pretty(spec).map_err(|e| Error::invalid("export", e.to_string()))
}

/// Whether `path` names a JSON file (by its extension).
pub fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// The configuration in a JSON `text` (an export with `--json`).
pub fn parse_json(text: &str, what: &str) -> Result<ConfigSpec, Error> {
    let spec: ConfigSpec =
        serde_json::from_str(text).map_err(|e| Error::invalid(what, e.to_string()))?;
    parse(&to_toml(&spec)?, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use busgate_shared::config::{ClientSpec, KeySpec, RateSpec, SecretSource, UpstreamSpec};

    fn rich() -> ConfigSpec {
        let mut spec = ConfigSpec::builtin();
        let upstream: UpstreamSpec = serde_json::from_value(serde_json::json!({
            "url": "http://127.0.0.1:9000/orders/{order_id}",
            "headers": {"X-Api-Key": {"env": "BILLING_KEY"}},
        }))
        .expect("upstream");
        assert!(upstream
            .headers
            .values()
            .all(|s| matches!(s, SecretSource::Env(_))));
        let service = spec.services.get_mut("service2").expect("service2");
        service.upstream = Some(upstream);
        spec.clients.insert(
            "shop".into(),
            ClientSpec {
                description: "the shop".into(),
                routes: vec!["order".into()],
                rate: Some(RateSpec {
                    per_second: 10,
                    burst: Some(20),
                }),
                keys: vec![KeySpec {
                    id: "k1".into(),
                    hash: "ab".repeat(32),
                    created: "2026-01-01T00:00:00Z".into(),
                }],
                ..ClientSpec::default()
            },
        );
        spec
    }

    #[test]
    fn an_export_reads_back_exactly_as_toml_and_as_json() {
        let spec = rich();
        let text = to_toml(&spec).expect("toml");
        assert!(
            text.contains("[services.service2.upstream.headers.X-Api-Key]"),
            "{text}"
        );
        assert_eq!(parse(&text, "f").expect("parse"), spec);
        let json = to_json(&spec).expect("json");
        assert_eq!(parse_json(&json, "f").expect("parse"), spec);
    }

    #[test]
    fn a_file_names_only_what_it_has_and_may_hold_other_settings() {
        let text = "[http]\nlisten = \"127.0.0.1:0\"\n[services.billing]\ntimeout = \"1s\"\n";
        let spec = parse(text, "f").expect("parse");
        assert_eq!(spec.services.len(), 1);
        assert!(spec.routes.is_empty(), "no built-in route");
        let Err(Error::Invalid { field, .. }) = parse("[htp]\n", "my.toml") else {
            panic!("a typo is refused");
        };
        assert_eq!(field, "my.toml");
    }
}
