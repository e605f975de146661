//! The operator: what turns a `BrowserFleet` into queues, agent
//! configuration and instances, and a `BrowserSession` into a browser.
//! [`run`] starts everything; [`fleet`] is the fleet reconcile (ensure →
//! observe → plan → act → report, a module each) with its per-fleet
//! memory; [`sessions`] the BrowserSession reconciler and its reply
//! handler; [`watches`] runs per fleet the [`events_queue`] consumer and the
//! depth poll, which ask for reconciles through a [`trigger`];
//! [`orphans`] sweeps instances whose fleet is gone; [`context`] holds the
//! clients and settings they share. The rest are the parts they build on
//! (`docs/operator.md`, `docs/architecture.md`).

pub mod agent_client;
pub mod agent_config;
pub mod bootstrap;
pub mod conditions;
pub mod context;
pub mod events_queue;
pub mod finalizers;
pub mod fleet;
pub mod metrics;
pub mod node_policy;
pub mod orphans;
pub mod run;
pub mod secrets;
pub mod sessions;
pub mod trigger;
pub mod watches;
