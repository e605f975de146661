//! The integration tests, one module per part they exercise, built into one
//! binary: each separate test binary links the product, the development
//! cluster and the test kit again, and runs only after the one before it has
//! finished, so thirty of them cost minutes of linking and leave a core idle
//! behind every slow test. Filter by module as before the merge,
//! `cargo test --test suite -- sessions::`.
//!
//! Three stay binaries of their own: `tests/demo.rs` and
//! `tests/sessions_scale.rs` each load the whole machine (the demo's
//! processes, fifty Chromiums) and would starve whichever test ran beside
//! them; `tests/faults/` points the process's AWS environment at a fault
//! proxy.

mod agent;
mod agent_process;
mod agent_restart;
mod apiserver;
mod chaos;
mod chart;
mod chart_install;
mod cloud_compute;
mod cloud_queues;
mod cloud_ssm;
mod crds;
mod disruption;
mod egress;
mod examples;
mod fleet_agent_config;
mod gateway_clients;
mod gitops_health;
mod iam_policies;
mod kubectl;
mod kustomize;
mod launcher_producer;
mod node_simulator;
mod nodes;
mod operations_docs;
mod operator;
mod operator_lifecycle;
mod operator_rbac;
mod protocol_fuzz;
mod scaling;
mod session_policy;
mod sessions;
mod spot;
