//! The operator: what turns a `BrowserFleet` into queues, agent
//! configuration and instances. [`run`] runs the controller, [`fleet`] is
//! its reconcile (observe → decide → act → report), [`plan`] the pure
//! decide step, [`watches`] the per-fleet events-queue consumer and depth
//! poll, [`orphans`] the sweep of instances whose fleet is gone,
//! [`sessions`] the BrowserSession reconciler; the rest are
//! the parts they build on (`docs/operator.md`).

pub mod agent_client;
pub mod agent_config;
pub mod bootstrap;
pub mod conditions;
pub mod context;
pub mod finalizers;
pub mod fleet;
pub mod launch;
pub mod metrics;
pub mod orphans;
pub mod plan;
pub mod run;
pub mod secrets;
pub mod sessions;
pub mod watches;
