//! browserfleet: a Kubernetes operator that runs fleets of browsers on EC2
//! instances for Chrome DevTools Protocol clients.
//!
//! See README.md for what is built so far.

pub mod agent;
pub mod api;
pub mod cloud;
pub mod commands;
pub mod operator;
pub mod protocol;
pub mod scaling;
pub mod secret;
pub mod telemetry;
