//! End-to-end tests: the real `sigma-keys` binary over HTTP, with a real
//! upstream, a temporary database and nothing mocked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod adversarial;
mod cli;
mod durability;
mod jwks;
#[path = "../jwt_keys.rs"]
mod jwt_keys;
mod lifecycle;
mod limits;
mod management;
mod multi_node;
mod openapi;
mod operations;
#[path = "../pg_cluster.rs"]
mod pg_cluster;
mod proxies;
mod proxy;
mod stock_host;
mod story;
mod support;
