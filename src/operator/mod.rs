//! The operator: what turns a `BrowserFleet` into queues, agent
//! configuration and instances. So far it holds the parts the fleet
//! reconciler builds on: the agent configuration a fleet's instances receive
//! ([`agent_config`]), the typed client of the agents' control API
//! ([`agent_client`]) and the decision that keeps launches from doubling
//! ([`launch`]).

pub mod agent_client;
pub mod agent_config;
pub mod bootstrap;
pub mod conditions;
pub mod context;
pub mod fleet;
pub mod launch;
pub mod metrics;
pub mod orphans;
pub mod plan;
pub mod run;
pub mod secrets;
pub mod watches;
