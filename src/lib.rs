//! browserfleet: a Kubernetes operator that runs fleets of browsers on EC2
//! instances for Chrome DevTools Protocol clients.
//!
//! The resource types and the cloud layer exist so far; see README.md for what
//! is built.

pub mod api;
pub mod cloud;
