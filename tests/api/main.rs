//! Integration tests: the real app against real Redis and PostgreSQL. Each test creates its own
//! campaigns, so tests run in parallel on the shared servers; fault tests start private servers.

mod acknowledgements;
mod alerting;
mod bad_input;
mod balanced;
mod cluster;
mod concurrency;
mod contract;
mod dashboard;
mod edge;
mod faults;
mod helpers;
mod hydration;
mod listings;
mod load;
mod operations;
mod outages;
mod persistence;
mod process;
mod reconcile;
mod scripts;
mod storm;
mod windows;
