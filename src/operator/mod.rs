//! The operator: what turns a `BrowserFleet` into queues, agent
//! configuration and instances. So far it holds the agent configuration a
//! fleet's instances receive ([`agent_config`]) and the typed client of the
//! agents' control API ([`agent_client`]); the fleet reconciler builds on
//! them.

pub mod agent_client;
pub mod agent_config;
