//! Stand-ins for a cluster and its nodes, for development and tests only: a
//! Kubernetes-compatible API server and the node simulator, which runs a
//! real agent for every instance moto reports running (more to come: the
//! dev stack behind `make demo`).

pub mod apiserver;
#[cfg(unix)]
pub mod nodes;
pub mod rbac;
