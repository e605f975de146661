//! The operator: what turns a `BrowserFleet` into queues, agent
//! configuration and instances. So far it holds the agent configuration a
//! fleet's instances receive ([`agent_config`]); the fleet reconciler builds
//! on it.

pub mod agent_config;
