//! The development cluster: stand-ins for a Kubernetes cluster and its
//! nodes, for `make demo` and the tests only. The product binary and its
//! image never contain this crate.
//!
//! * [`apiserver`]: a Kubernetes-compatible API server in memory.
//! * [`nodes`]: the node simulator, which plays EC2 and the node for every
//!   instance moto reports running by starting a real agent.

pub mod apiserver;
#[cfg(unix)]
pub mod nodes;
