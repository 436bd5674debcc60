//! The stacks tests start from: NATS, the two built-in services and a gateway. [`Stack::start`]
//! puts each service behind a demo HTTP service and an adapter; [`Stack::native`] serves both
//! natively on NATS.

use crate::fixture::Settings;
use crate::gateway::Gateway;
use crate::nats::NatsServer;
use crate::process::Proc;
use crate::workers::Worker;

/// NATS, `service1` and `service2` served on it, and a gateway.
pub struct Stack {
    /// The gateway, started with the stack's settings.
    pub gateway: Gateway,
    /// What serves the services on NATS: an adapter each, or the native services.
    pub adapters: Vec<Proc>,
    /// The demo HTTP services behind the adapters, with their base URLs (none when native).
    pub demos: Vec<(Proc, String)>,
    /// The stack's nats-server.
    pub nats: NatsServer,
}

impl Stack {
    /// The default stack; the gateway starts with `settings` (nothing set: built-in routes).
    pub async fn start(settings: &Settings) -> Stack {
        let nats = NatsServer::start();
        let demos = vec![Worker::demo("service1"), Worker::demo("service2")];
        let adapters = vec![
            Worker::adapter(&nats, "service1", &demos[0].1),
            Worker::adapter(&nats, "service2", &demos[1].1),
        ];
        let gateway = Gateway::start(&nats, settings).await;
        Stack {
            gateway,
            adapters,
            demos,
            nats,
        }
    }

    /// NATS, `service1` and `service2` as native NATS services, and a gateway with `settings`.
    pub async fn native(settings: &Settings) -> Stack {
        let (nats, adapters) = native_services();
        let gateway = Gateway::start(&nats, settings).await;
        Stack {
            gateway,
            adapters,
            demos: Vec::new(),
            nats,
        }
    }
}

/// NATS with `service1` and `service2` served on it as native services (start gateways on it).
pub fn native_services() -> (NatsServer, Vec<Proc>) {
    let nats = NatsServer::start();
    let services = Worker::natives(&nats, &["service1", "service2"]);
    (nats, services)
}
