//! Who a public request comes from: JWTs of configured issuers ([`jwt`]).

pub mod jwt;
