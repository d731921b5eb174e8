//! voucher-gateway: flash-sale voucher redemption that never over-redeems.
//!
//! - `domain`: the values of the API and of the outbox, parsed once at the edge
//! - `config`: every setting, as flags and environment variables
//! - `telemetry`: logging and metrics
//! - `redis`: every Redis command: connections, key layout, Lua scripts, outbox streams
//! - `store`: PostgreSQL, the system of record
//! - `gateway`: the operations (create, redeem, summary, hydration)
//! - `writer`: the outbox consumer that persists redemptions
//! - `supervise`: background loops restarted when they fail, and which of them live
//! - `backoff`: the pauses between retries
//! - `memo`: values computed at most once per interval, for the operator's endpoints
//! - `health`: readiness checks
//! - `reconcile`: comparing Redis with PostgreSQL, and repairing the difference
//! - `http`: the API
//! - `app`: building and running the whole service

pub mod app;
pub mod backoff;
pub mod config;
pub mod domain;
pub mod gateway;
pub mod health;
pub mod http;
pub mod memo;
pub mod reconcile;
pub mod redis;
pub mod store;
pub mod supervise;
pub mod telemetry;
pub mod writer;
