//! Stand-ins for a cluster, for development and tests only: a
//! Kubernetes-compatible API server (more to come: the node simulator and the
//! dev stack behind `make demo`).

pub mod apiserver;
