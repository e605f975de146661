//! What the fleet reconciler remembers of a fleet between reconciles, in
//! this process only (docs/operator.md says what survives a restart): one
//! [`FleetMemory`] per fleet, loaded when a reconcile starts and stored once
//! when it ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use jiff::Timestamp;

use crate::api::fleet::{BootstrapStatus, ImageSource};
use crate::cloud::ImageId;

use crate::operator::agent_config::{FleetQueues, FleetSecrets};
use crate::scaling::policy::PolicyMemory;

/// What was created for a fleet at a generation: converged once per
/// operator process and generation, so a steady reconcile makes no call for
/// them.
#[derive(Clone, Debug)]
pub struct Ensured {
    /// The fleet generation they were ensured for.
    pub generation: i64,
    pub queues: FleetQueues,
    /// The name of the SSM parameter holding the agent configuration.
    pub parameter: String,
    /// The fleet's secrets: the token its agents accept, the key of its
    /// signed messages.
    pub secrets: FleetSecrets,
}

/// One fleet's memory.
#[derive(Clone, Debug, Default)]
pub struct FleetMemory {
    /// What the last ensure step converged, at which generation.
    pub ensured: Option<Ensured>,
    /// The scaling policy's memory; `None` until this process decided for
    /// the fleet once.
    pub policy: Option<PolicyMemory>,
    /// Reconciles that failed in a row (the error back-off).
    pub failures: u32,
    /// When this process first observed the fleet (its queues ensured, EC2
    /// and its queue read): an agent's silence is never counted from before
    /// it. `None` until then, however many reconciles failed before.
    pub watching_since: Option<Timestamp>,
    /// The AMI the fleet's image source named when last read.
    pub image: Option<ResolvedImage>,
    /// The last agent upgrade this process sent to each instance: a
    /// reconcile that reads a status older than its own last write (a
    /// lagging cache, a lost write) must not send it again.
    pub upgrades: BTreeMap<String, BootstrapStatus>,
}

/// An image source and the AMI it named.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    pub source: ImageSource,
    pub id: ImageId,
    pub resolved_at: Instant,
}

impl FleetMemory {
    /// What was ensured, when it was for `generation`.
    pub fn ensured_at(&self, generation: i64) -> Option<&Ensured> {
        self.ensured.as_ref().filter(|e| e.generation == generation)
    }
}

/// Every fleet's memory, by uid.
#[derive(Debug, Default)]
pub struct FleetMemories {
    by_uid: Mutex<HashMap<String, FleetMemory>>,
}

impl FleetMemories {
    /// The fleet's memory: an empty one the first time.
    pub fn load(&self, uid: &str) -> FleetMemory {
        self.lock().entry(uid.to_owned()).or_default().clone()
    }

    pub fn store(&self, uid: &str, memory: FleetMemory) {
        self.lock().insert(uid.to_owned(), memory);
    }

    /// Forgets a deleted fleet.
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// Failed reconciles in a row, for the error policy.
    pub fn failures(&self, uid: &str) -> u32 {
        self.lock().get(uid).map_or(0, |m| m.failures)
    }

    /// The fleet secrets this process ensured, if it did: the session
    /// reconciler and the reply inbox read them before falling back on the
    /// fleet's Secret.
    pub fn secrets(&self, uid: &str) -> Option<FleetSecrets> {
        let memories = self.lock();
        let ensured = memories.get(uid)?.ensured.as_ref()?;
        Some(ensured.secrets.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FleetMemory>> {
        self.by_uid.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_is_remembered_until_forgotten() {
        let memories = FleetMemories::default();
        let mut memory = memories.load("uid");
        assert_eq!(memory.watching_since, None);
        let first = Timestamp::now();
        memory.watching_since = Some(first);
        memory.failures = 3;
        memories.store("uid", memory);
        assert_eq!(memories.failures("uid"), 3);
        assert_eq!(memories.load("uid").watching_since, Some(first));
        memories.forget("uid");
        assert_eq!(memories.failures("uid"), 0);
        assert!(memories.secrets("uid").is_none());
    }
}
