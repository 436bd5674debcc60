//! Demo orders: deterministic data per service and order id, and failure prefixes so that
//! anyone can try every failure mode with curl.
//!
//! | order id prefix | effect |
//! |---|---|
//! | `slow-` | every demo service waits 3 s before answering |
//! | `fail-` | every demo service fails (HTTP 500 / `error` reply) |
//! | `missing-` | every demo service does not know the order (HTTP 404 / `not_found`) |
//! | `slowN-`, `failN-`, `missingN-` | the same, only on service N (`service1`, `service2`, …) |

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

/// How long a `slow-` order takes.
pub const SLOW_DELAY: Duration = Duration::from_secs(3);

/// What a demo service does with an order.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Answer with this data (one JSON value).
    Data(Bytes),
    /// Answer with this data after [`SLOW_DELAY`].
    Slow(Bytes),
    /// Fail.
    Fail,
    /// Say the order does not exist.
    Missing,
}

/// The answer of demo `service` for `order_id`.
pub fn answer(service: &str, order_id: &str) -> Answer {
    let index = service_index(service);
    if has_prefix(order_id, "missing", index) {
        Answer::Missing
    } else if has_prefix(order_id, "fail", index) {
        Answer::Fail
    } else if has_prefix(order_id, "slow", index) {
        Answer::Slow(data(service, order_id))
    } else {
        Answer::Data(data(service, order_id))
    }
}

/// `service2` → 2; names without trailing digits have no index.
fn service_index(service: &str) -> Option<u32> {
    let digits = service.trim_start_matches(|c: char| !c.is_ascii_digit());
    digits.parse().ok()
}

/// `slow-…` matches every service; `slow2-…` only service 2.
fn has_prefix(order_id: &str, word: &str, index: Option<u32>) -> bool {
    let Some(rest) = order_id.strip_prefix(word) else {
        return false;
    };
    if rest.starts_with('-') {
        return true;
    }
    let Some((digits, _)) = rest.split_once('-') else {
        return false;
    };
    !digits.is_empty() && digits.parse::<u32>().ok() == index && index.is_some()
}

/// The demo service that looks up a carrier by its code (the `carrier` attribute, or the
/// `{carrier}` of its URL): what a composed route asks with a value from service2's answer.
pub const CARRIERS: &str = "carriers";

/// The demo data of carrier `code` (`DHL`, `UPS`, `FedEx`, `GLS`); `None` for any other.
pub fn carrier(code: &str) -> Option<Bytes> {
    let (name, phone, site) = match code {
        "DHL" => ("DHL Express", "+49 228 28609898", "https://www.dhl.com"),
        "UPS" => (
            "United Parcel Service",
            "+1 800 742 5877",
            "https://www.ups.com",
        ),
        "FedEx" => ("FedEx", "+1 800 463 3339", "https://www.fedex.com"),
        "GLS" => (
            "General Logistics Systems",
            "+49 6677 646 907 000",
            "https://gls-group.com",
        ),
        _ => return None,
    };
    let v = serde_json::json!({"carrier": code, "name": name, "phone": phone, "site": site});
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// FNV-1a: stable across runs and platforms (std's hasher is seeded per process).
fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The data of `service` for `order_id`, written straight from typed parts: a service answers
/// with bytes, as the nginx upstreams of the benchmark do. Keys are in alphabetical order.
fn data(service: &str, order_id: &str) -> Bytes {
    #[derive(Serialize)]
    struct Item {
        qty: u64,
        sku: String,
    }
    #[derive(Serialize)]
    struct Order<'a> {
        amount: f64,
        currency: &'static str,
        items: [Item; 1],
        order_id: &'a str,
        status: &'static str,
    }
    #[derive(Serialize)]
    struct Shipment<'a> {
        carrier: &'static str,
        eta: String,
        order_id: &'a str,
        tracking: String,
    }
    #[derive(Serialize)]
    struct Other<'a> {
        order_id: &'a str,
        service: &'a str,
        value: u64,
    }
    let h = hash(order_id);
    let mut out = Vec::with_capacity(160 + 2 * order_id.len());
    let written = match service_index(service) {
        Some(1) => {
            let statuses = ["created", "paid", "shipped", "delivered"];
            let order = Order {
                amount: (h % 100_000) as f64 / 100.0,
                currency: "EUR",
                items: [Item {
                    qty: 1 + h % 5,
                    sku: format!("SKU-{}", h % 1000),
                }],
                order_id,
                status: statuses[(h % 4) as usize],
            };
            serde_json::to_writer(&mut out, &order)
        }
        Some(2) => {
            let carriers = ["DHL", "UPS", "FedEx", "GLS"];
            let shipment = Shipment {
                carrier: carriers[(h % 4) as usize],
                eta: format!("2026-12-{:02}", 1 + h % 28),
                order_id,
                tracking: format!("JD{:010}", h % 10_000_000_000),
            };
            serde_json::to_writer(&mut out, &shipment)
        }
        _ => serde_json::to_writer(
            &mut out,
            &Other {
                order_id,
                service,
                value: h % 1000,
            },
        ),
    };
    // Writing plain structs of strings and numbers into a Vec cannot fail.
    debug_assert!(written.is_ok());
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: &Bytes) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("one JSON value")
    }

    #[test]
    fn data_escapes_client_text_and_keeps_its_keys_sorted() {
        let Answer::Data(v) = answer("billing", "a\"b") else {
            panic!("data")
        };
        let text = std::str::from_utf8(&v).expect("utf-8");
        assert!(
            text.starts_with(r#"{"order_id":"a\"b","service":"billing","value":"#),
            "{text}"
        );
        assert_eq!(json(&v)["order_id"], "a\"b");
    }

    #[test]
    fn data_is_deterministic_and_carries_the_order_id() {
        let a = answer("service1", "A1");
        assert_eq!(a, answer("service1", "A1"));
        let Answer::Data(v) = a else { panic!("data") };
        let v = json(&v);
        assert_eq!(v["order_id"], "A1");
        assert!(v["amount"].is_number());
        assert!(v["items"][0]["sku"]
            .as_str()
            .is_some_and(|s| s.starts_with("SKU-")));
        let Answer::Data(v) = answer("service2", "A1") else {
            panic!("data")
        };
        let v = json(&v);
        assert_eq!(v["order_id"], "A1");
        assert!(v["carrier"].is_string());
        assert!(v["tracking"].is_string());
    }

    #[test]
    fn carriers_are_known_by_code() {
        let v = json(&carrier("DHL").expect("known"));
        assert_eq!(v["name"], "DHL Express");
        assert!(carrier("dhl").is_none());
    }

    #[test]
    fn prefixes_act_on_all_or_one_service() {
        assert_eq!(answer("service1", "fail-1"), Answer::Fail);
        assert_eq!(answer("service2", "fail-1"), Answer::Fail);
        assert_eq!(
            answer("service1", "missing2-1"),
            answer("service1", "missing2-1")
        );
        assert!(matches!(answer("service1", "missing2-1"), Answer::Data(_)));
        assert_eq!(answer("service2", "missing2-1"), Answer::Missing);
        assert!(matches!(answer("service1", "slow1-x"), Answer::Slow(_)));
        assert!(matches!(answer("service2", "slow1-x"), Answer::Data(_)));
        assert!(matches!(answer("service1", "slowly"), Answer::Data(_)));
        assert!(matches!(answer("service12", "fail1-x"), Answer::Data(_)));
        assert!(matches!(answer("billing", "fail1-x"), Answer::Data(_)));
        assert_eq!(answer("billing", "fail-x"), Answer::Fail);
    }
}
