//! The tests that inject faults between the real SDK and moto, built into a
//! binary of their own: `testkit::fault_proxy` points this process's AWS
//! environment (`AWS_ENDPOINT_URL`) at the proxy, which the SDK reads once
//! per process, so every other test beside them would go through it too.

mod cloud_faults;
mod operator_faults;
