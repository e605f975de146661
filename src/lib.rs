//! browserfleet: a Kubernetes operator that runs fleets of browsers on EC2
//! instances for Chrome DevTools Protocol clients.
//!
//! Only the resource types exist so far; see README.md for what is built.

pub mod api;
pub mod cloud;
