//! The rules of settings: loading, validation, redaction.

use std::io::Write;
use std::time::Duration;

use super::load::settings_env;
use super::*;
use crate::error::StartupError;

fn write(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    f.write_all(text.as_bytes()).expect("write");
    f
}

#[test]
fn only_settings_are_read_from_the_environment() {
    let vars = [
        ("BUSGATE_NATS__URL", "nats://x:4222"),
        ("BUSGATE_HOME", "/opt/busgate"),
        ("BUSGATE_TEST_LOGS", "1"),
        ("BUSGATE_SHUTDOWN_GRACE", "3s"),
        ("PATH", "/bin"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let kept = settings_env(vars.into_iter());
    let mut names: Vec<_> = kept.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["BUSGATE_NATS__URL", "BUSGATE_SHUTDOWN_GRACE"]);
}

#[test]
fn replicas_are_1_to_5() {
    for (replicas, ok) in [(0, false), (1, true), (3, true), (5, true), (6, false)] {
        let mut s = Settings::default();
        s.jobs.replicas = replicas;
        assert_eq!(s.validate().is_ok(), ok, "{replicas}");
    }
}

#[test]
fn the_metrics_listener_is_public_unless_set_and_checked() {
    assert_eq!(
        Settings::default().metrics.listener,
        MetricsListener::Public
    );
    let vars = [("BUSGATE_METRICS__LISTENER", "admin")].map(|(k, v)| (k.to_owned(), v.to_owned()));
    assert_eq!(
        settings_env(vars.into_iter()).len(),
        1,
        "read from the environment"
    );
    let f = write("[metrics]\nlistener = \"admin\"\n");
    let s = Settings::load(Some(f.path())).expect("load");
    assert_eq!(s.metrics.listener, MetricsListener::Admin);
    let f = write("[metrics]\nlistener = \"both\"\n");
    assert!(matches!(
        Settings::load(Some(f.path())),
        Err(StartupError::LoadSettings(_))
    ));
}

#[test]
fn admin_tokens_are_long_and_come_from_settings_or_a_file() {
    let admin = |token: &str, token_file: &str| AdminSettings {
        token: token.into(),
        token_file: token_file.into(),
        ..AdminSettings::default()
    };
    assert_eq!(admin("", "").resolve_token().expect("none"), None);
    let long = "x".repeat(MIN_ADMIN_TOKEN);
    assert_eq!(
        admin(&long, "").resolve_token().expect("long enough"),
        Some(long.clone())
    );
    for short in ["test-admin-token", &"x".repeat(MIN_ADMIN_TOKEN - 1)] {
        let e = admin(short, "").resolve_token().expect_err("too short");
        assert!(!e.to_string().contains(short), "{e}");
    }
    let spaced = format!("{} x", "y".repeat(MIN_ADMIN_TOKEN));
    assert!(admin(&spaced, "").resolve_token().is_err());
    let file = write(&format!("{long}\n"));
    let path = file.path().display().to_string();
    assert_eq!(
        admin("", &path).resolve_token().expect("from the file"),
        Some(long.clone())
    );
    assert!(admin(&long, &path).resolve_token().is_err(), "both set");
    let missing = "/nonexistent/busgate-admin-token";
    let e = admin("", missing)
        .resolve_token()
        .expect_err("missing file");
    assert!(
        matches!(&e, busgate_shared::Error::Invalid { field, reason }
            if field == "admin.token_file" && reason.contains(missing)),
        "{e}"
    );
    let mut s = Settings::default();
    s.admin.token = "short".into();
    assert!(matches!(
        s.validate(),
        Err(StartupError::InvalidSettings(_))
    ));
}

#[test]
fn debug_output_holds_no_secret() {
    let mut s = Settings::default();
    s.nats.url = "nats://u:nats-pass-9@h:4222".into();
    s.admin.token = "admin-token-9".repeat(3);
    s.callbacks.secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=".into();
    let text = format!("{s:?}");
    for secret in ["nats-pass-9", "admin-token-9", "c2VjcmV0"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(text.contains("nats://***@h:4222"), "{text}");
}

#[test]
fn defaults_are_valid_and_builtin() {
    let s = Settings::default();
    s.validate().expect("valid");
    assert_eq!(s.http.listen.port(), 8080);
    assert_eq!(s.admin.listen.to_string(), "127.0.0.1:9090");
    assert!(s.routes.contains_key("order"));
    assert_eq!(s.services["service1"].timeout, Duration::from_millis(800));
}

#[test]
fn file_values_override_defaults_and_replace_routes() {
    let f = write(
        r#"
shutdown_grace = "3s"
[http]
listen = "127.0.0.1:0"
[services.a]
timeout = "250ms"
[routes.only]
deadline = "500ms"
bindings = [{ method = "GET", path = "/x/{order_id}" }]
targets = [{ service = "a" }]
"#,
    );
    let s = Settings::load(Some(f.path())).expect("load");
    s.validate().expect("valid");
    assert_eq!(s.shutdown_grace, Duration::from_secs(3));
    assert_eq!(s.http.listen.port(), 0);
    assert_eq!(s.http.body_limit, 64 * 1024);
    assert_eq!(s.services.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(s.routes["only"].deadline, Duration::from_millis(500));
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    let f = write("[http]\nlisten = \"127.0.0.1:0\"\nport = 3\n");
    assert!(matches!(
        Settings::load(Some(f.path())),
        Err(StartupError::LoadSettings(_))
    ));
    let f = write("[http]\nbody_limit = 10\n");
    let s = Settings::load(Some(f.path())).expect("load");
    assert!(matches!(
        s.validate(),
        Err(StartupError::InvalidSettings(_))
    ));
    let f = write("[http]\norder_id_pattern = \"[a-z]+\"\n");
    let s = Settings::load(Some(f.path())).expect("load");
    assert!(matches!(
        s.validate(),
        Err(StartupError::InvalidSettings(_))
    ));
    for ratio in ["1.5", "-0.1", "nan"] {
        let f = write(&format!("[http]\ntrace_sample_ratio = {ratio}\n"));
        let s = Settings::load(Some(f.path())).expect("load");
        assert!(
            matches!(s.validate(), Err(StartupError::InvalidSettings(_))),
            "{ratio} must be refused"
        );
    }
    for bad in [
        "[http]\nheader_timeout = \"0s\"\n",
        "[http]\nbody_timeout = \"1h\"\n",
        "[http]\nmax_in_flight = 0\n",
        "[http]\nmax_connections = 0\n",
        "[http]\nmax_headers = 0\n",
        "[http]\nmax_header_bytes = 100\n",
        "[jobs]\nmax_event_streams = 0\n",
        "[jobs]\nmax_waiters = 0\n",
    ] {
        let s = Settings::load(Some(write(bad).path())).expect("load");
        assert!(
            matches!(s.validate(), Err(StartupError::InvalidSettings(_))),
            "{bad} must be refused"
        );
    }
    let f = write("[http]\ntrace_sample_ratio = 0.5\n");
    let s = Settings::load(Some(f.path())).expect("load");
    s.validate().expect("0.5 is a ratio");
    assert_eq!(s.http.trace_sample_ratio, 0.5);
}

#[test]
fn queue_limits_are_validated() {
    let mut s = Settings::default();
    s.jobs.requests.max_msgs = 0;
    assert!(matches!(
        s.validate(),
        Err(StartupError::InvalidSettings(_))
    ));
    let mut s = Settings::default();
    s.jobs.results_max_bytes = 10;
    assert!(s.validate().is_err());
    let mut s = Settings::default();
    s.jobs.callbacks.discard = Discard::Old;
    assert!(s.validate().is_ok());
}

#[test]
fn failure_throttle_and_anonymous_limits_are_checked() {
    let s = Settings::default();
    assert_eq!(
        s.auth.max_failures_per_minute,
        auth::DEFAULT_MAX_FAILURES_PER_MINUTE
    );
    assert!(validate_throttle(&s.auth).is_ok());
    let mut a = s.auth.clone();
    a.max_failures_per_minute = auth::MAX_FAILURES_PER_MINUTE + 1;
    assert!(validate_throttle(&a).is_err());
    a.max_failures_per_minute = 0;
    assert!(validate_throttle(&a).is_ok(), "0 is off");
    for bad in [
        AnonymousSettings {
            rate: Some(busgate_shared::config::RateSpec {
                per_second: 0,
                burst: None,
            }),
            ..Default::default()
        },
        AnonymousSettings {
            max_pending: Some(0),
            ..Default::default()
        },
        AnonymousSettings {
            max_streams: Some(0),
            ..Default::default()
        },
    ] {
        let mut a = s.auth.clone();
        a.anonymous = bad;
        assert!(validate_throttle(&a).is_err(), "{:?}", a.anonymous);
    }
    let toml = write(
        "[auth]\nmode = \"none\"\n[auth.anonymous]\nrate = { per_second = 2, burst = 4 }\nmax_pending = 3\n",
    );
    let loaded = Settings::load(Some(toml.path())).expect("loads");
    assert_eq!(loaded.auth.anonymous.max_pending, Some(3));
    assert_eq!(loaded.auth.anonymous.rate.map(|r| r.burst()), Some(4));
}
