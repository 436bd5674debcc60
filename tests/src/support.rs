//! The harness under its first name: every helper of the role modules re-exported, for the
//! benchmark and the tests that `use busgate_tests::support::…`. New code names the role
//! module (`process`, `nats`, `gateway`, …).

pub use crate::cluster::{ClusterNode, NatsCluster};
pub use crate::gateway::{Answer, ClientKey, Gateway, ADMIN_TOKEN};
pub use crate::http::{get_json, get_status, get_text, header, http, serve};
pub use crate::jobs::{poll_final, request_id, status_doc, submit, submit_request, until_final};
pub use crate::nats::{NatsServer, TestCa};
pub use crate::process::{bin, Proc, READY_WITHIN};
pub use crate::stack::{native_services, Stack};
pub use crate::wait::{eventually, free_port};
pub use crate::workers::Worker;
