//! The gateway settings of the benchmark and of the perf scripts that read theirs from here
//! (`busgate-bench --print-settings bench|merge|merge-keyed|merge-guarded|held|merge-coalesce|compose`),
//! all built with [`busgate_tests::fixture`].
//!
//! Coalescing is on by default, and the benchmark asks for one order id over and over: every
//! setting here turns it off (the benchmark measures gathers), except `merge-coalesce`, which
//! is `merge` with it on (what coalescing does to the same load).

use std::time::Duration;

use busgate_tests::fixture::{Route, Settings};

/// Requests the memory scenario holds in flight (one connection each).
pub const MEMORY_HOLD: usize = 10_000;

/// `http.max_connections` and `http.max_in_flight` of the benchmark's gateway: above the
/// defaults (10,000 and 4,096), so that the memory scenario's [`MEMORY_HOLD`] connections,
/// each with a request in flight, fit beside the connection that reads `/metrics`.
pub const BENCH_CONNECTION_CAP: usize = MEMORY_HOLD + 1_000;
const _: () = assert!(BENCH_CONNECTION_CAP > MEMORY_HOLD);

/// A benchmark route: `GET /bench/<name>/{order_id}`, deadline 2 s.
fn bench_route(name: &str) -> Route {
    Route::get(&format!("/bench/{name}/{{order_id}}")).deadline(Duration::from_secs(2))
}

/// Two native sources merged, the second optional: scenario 3 and the perf scripts.
fn merge_route() -> Route {
    bench_route("merge").target("n1").optional("n2")
}

/// One native source held for up to 30 s (`slow-` orders take 3 s): the memory scenario.
fn hold_route() -> Route {
    let thirty = Duration::from_secs(30);
    Route::get("/bench/hold/{order_id}")
        .deadline(thirty)
        .target_with_timeout("n1", thirty)
}

/// The benchmark's gateway: native services n1…n8, adapters a1 and a2, a route per scenario
/// and per fan-out width, and the held route; connection and in-flight caps raised to
/// [`BENCH_CONNECTION_CAP`] for the memory scenario.
pub fn bench_settings() -> Settings {
    let two = Duration::from_secs(2);
    let natives: Vec<String> = (1..=8).map(|i| format!("n{i}")).collect();
    // Routes, not clients, are measured here: anonymous requests, written out.
    let mut settings = Settings::default()
        .log_level("warn")
        .jobs_concurrency(512)
        .http_max_connections(BENCH_CONNECTION_CAP)
        .http_max_in_flight(BENCH_CONNECTION_CAP)
        .auth_none();
    for service in natives.iter().map(String::as_str).chain(["a1", "a2"]) {
        settings = settings.service(service, two);
    }
    settings = settings
        .route("one", bench_route("one").target("n1"))
        .route("merge", merge_route())
        .route("one-adapter", bench_route("one-adapter").target("a1"))
        .route(
            "merge-adapter",
            bench_route("merge-adapter").target("a1").optional("a2"),
        )
        .route("hold", hold_route());
    for width in [1, 2, 4, 8] {
        let name = format!("fan{width}");
        let route = natives[..width]
            .iter()
            .fold(bench_route(&name), |route, service| route.target(service));
        settings = settings.route(&name, route);
    }
    settings.no_coalescing()
}

/// The gateway of `tests/perf/merge-stack.sh`: route `merge` alone.
fn merge_stack_settings() -> Settings {
    let two = Duration::from_secs(2);
    Settings::default()
        .log_level("warn")
        .auth_none()
        .service("n1", two)
        .service("n2", two)
        .route("merge", merge_route())
        .no_coalescing()
}

/// [`merge_stack_settings`] with coalescing on (the default of a service): the same load, with
/// concurrent identical requests sharing one publish (`tests/perf/ab-merge.sh` with
/// `SETTINGS=merge-coalesce`).
fn merge_coalesce_settings() -> Settings {
    merge_stack_settings()
        .coalesce("n1", true)
        .coalesce("n2", true)
}

/// [`merge_stack_settings`] with a circuit breaker and retries on both services (defaults,
/// which never trigger on healthy services): what the resilience guard costs on the merge
/// (`SETTINGS=merge-guarded tests/perf/ab-merge.sh …`).
fn merge_guarded_settings() -> Settings {
    let guarded = busgate_shared::config::ServiceSpec {
        timeout: Duration::from_secs(2),
        breaker: Some(Default::default()),
        retry: Some(Default::default()),
        ..Default::default()
    };
    Settings::default()
        .log_level("warn")
        .auth_none()
        .service_spec("n1", guarded.clone())
        .service_spec("n2", guarded)
        .route("merge", merge_route())
        .no_coalescing()
}

/// [`merge_stack_settings`] and what `tests/perf/composition-overhead.sh` compares: each of n1
/// and n2 alone (`/bench/stage1/…`, `/bench/stage2/…`) and the two as stages of one composed
/// route (`/bench/chain/…`: n2 needs n1 and is given n1's `order_id` as an attribute).
fn compose_settings() -> Settings {
    let mut second = busgate_shared::config::TargetSpec::new("n2", true);
    second.needs = vec!["n1".into()];
    second.with = [("id".to_owned(), "/n1/order_id".to_owned())].into();
    merge_stack_settings()
        .route("stage1", bench_route("stage1").target("n1"))
        .route("stage2", bench_route("stage2").target("n2"))
        .route(
            "chain",
            bench_route("chain").target("n1").target_spec(second),
        )
}

/// The API key of the `bench` client of [`merge_keyed_settings`]: a fixture, not a secret
/// (`tests/perf/ab-auth.sh` sends it).
#[cfg_attr(not(test), allow(dead_code))] // the script holds a copy; the test below checks the pair
pub const BENCH_KEY: &str = "bgk_YnVzZ2F0ZSBiZW5jaG1hcmsga2V5IG5vdCBzZWNyZXQ";
/// Its SHA-256, as the configuration stores it.
const BENCH_KEY_HASH: &str = "b1675905df3b6ea73f1ecd8f2823055749279b412f0add6014822ad98277d094";

/// [`merge_stack_settings`] with clients: auth required, one client `bench` with the key
/// [`BENCH_KEY`] and a rate limit that never triggers. What API-key authentication and a
/// rate limit cost on the merge (`tests/perf/ab-auth.sh`).
fn merge_keyed_settings() -> Settings {
    let two = Duration::from_secs(2);
    Settings::default()
        .log_level("warn")
        .auth_required()
        .service("n1", two)
        .service("n2", two)
        .route("merge", merge_route())
        .client(
            "bench",
            busgate_shared::config::ClientSpec {
                rate: Some(busgate_shared::config::RateSpec {
                    per_second: busgate_shared::config::MAX_RATE,
                    burst: Some(busgate_shared::config::MAX_RATE),
                }),
                keys: vec![busgate_shared::config::KeySpec {
                    id: "bench".into(),
                    hash: BENCH_KEY_HASH.into(),
                    created: String::new(),
                }],
                ..Default::default()
            },
        )
        .no_coalescing()
}

/// The gateway of `tests/perf/held-gathers.py`: the held route and the merge for `--preload`,
/// with the benchmark's caps (its default N is [`MEMORY_HOLD`]).
fn held_gathers_settings() -> Settings {
    Settings::default()
        .log_level("warn")
        .http_max_connections(BENCH_CONNECTION_CAP)
        .http_max_in_flight(BENCH_CONNECTION_CAP)
        .auth_none()
        .service("n1", Duration::from_secs(30))
        .service("n2", Duration::from_secs(2))
        .route("hold", hold_route())
        .route("merge", merge_route())
        .no_coalescing()
}

/// `--print-settings NAME`: the settings file of the benchmark's gateway or a perf script's.
pub fn print_settings(name: &str) -> ! {
    let settings = match name {
        "bench" => bench_settings(),
        "merge" => merge_stack_settings(),
        "merge-keyed" => merge_keyed_settings(),
        "merge-guarded" => merge_guarded_settings(),
        "held" => held_gathers_settings(),
        "merge-coalesce" => merge_coalesce_settings(),
        "compose" => compose_settings(),
        other => {
            eprintln!(
                "--print-settings: no settings named {other:?} (bench, merge, merge-keyed, merge-guarded, held, merge-coalesce, compose)"
            );
            std::process::exit(2);
        }
    };
    print!("{}", settings.to_toml());
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn the_bench_key_hashes_to_the_configured_hash() {
        let hash: String = sha2::Sha256::digest(BENCH_KEY.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hash, BENCH_KEY_HASH);
    }

    #[test]
    fn the_bench_gateway_has_room_for_the_memory_scenario() {
        let toml = bench_settings().to_toml();
        assert!(
            toml.contains(&format!("max_connections = {BENCH_CONNECTION_CAP}")),
            "{toml}"
        );
        assert!(
            toml.contains(&format!("max_in_flight = {BENCH_CONNECTION_CAP}")),
            "{toml}"
        );
    }
}
