//! The demo data answered directly on NATS through the Busgate SDK: no HTTP hop.

use busgate_shared::drain;
use busgate_shared::envelope::{code, Reply, ServiceRequest};
use busgate_shared::sdk::{self, ServeOptions};

use crate::demo_data::{self, Answer, SLOW_DELAY};

/// Serves the demo `services` natively on NATS, on one connection, until `drain` is signalled;
/// the drain is released once they have unregistered and the connection is closed.
pub async fn run(
    nats: &busgate_shared::nats::NatsSettings,
    services: &[String],
    concurrency: usize,
    drain: drain::Watch,
) -> anyhow::Result<()> {
    let nats = busgate_shared::wire::Connection::connect_with(
        nats,
        &format!("busgate-worker native {}", services.join(",")),
    )?;
    let serving = services.iter().map(|service| {
        let mut options = ServeOptions::new(service.as_str());
        options.concurrency = concurrency;
        options.description = format!("demo service {service}, native on NATS");
        options
            .metadata
            .insert(busgate_shared::micro::META_MODE.into(), "native".into());
        let name = service.clone();
        let handler = move |req: ServiceRequest, _ctx| {
            let answer = if name == demo_data::CARRIERS {
                // Looked up by the carrier a composed route sends as an attribute.
                let code = req.attributes.get("carrier").and_then(|v| v.as_str());
                code.and_then(demo_data::carrier)
                    .map_or(Answer::Missing, Answer::Data)
            } else {
                demo_data::answer(&name, &req.order_id)
            };
            async move {
                let data = match answer {
                    Answer::Data(v) => v,
                    Answer::Slow(v) => {
                        tokio::time::sleep(SLOW_DELAY).await;
                        v
                    }
                    Answer::Fail => return Reply::error(code::INTERNAL, "demo failure"),
                    Answer::Missing => return Reply::NotFound,
                };
                Reply::Ok(data)
            }
        };
        (options, handler)
    });
    sdk::serve_all(&nats, serving, drain.clone()).await?;
    nats.close(std::time::Duration::from_secs(2)).await;
    drop(drain);
    Ok(())
}
