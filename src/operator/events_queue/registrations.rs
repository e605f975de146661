//! Where each fleet's agents listen, as they announced it on the events
//! queue (`node.registered`, `node.heartbeat`): the operator never assumes it
//! can reach an instance's private IP.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use jiff::Timestamp;

use crate::cloud::InstanceId;
use crate::operator::fleet::plan::Registration;
use crate::protocol::NodeAnnouncement;

/// The registrations heard, per fleet uid.
#[derive(Debug, Default)]
pub struct Registrations {
    by_fleet: Mutex<HashMap<String, BTreeMap<InstanceId, Registration>>>,
}

impl Registrations {
    /// Records an announcement; whether it told something new (an instance,
    /// an address or a draining state not known before).
    pub fn record(
        &self,
        fleet_uid: &str,
        announcement: &NodeAnnouncement,
        heard: Timestamp,
    ) -> bool {
        let mut by_fleet = self.by_fleet.lock().unwrap_or_else(|e| e.into_inner());
        let fleet = by_fleet.entry(fleet_uid.to_owned()).or_default();
        let id = InstanceId::new(&announcement.instance_id);
        let new = Registration {
            address: announcement.address.clone(),
            agent_version: announcement.agent_version.clone(),
            heard,
            drained: announcement.draining && announcement.sessions == 0,
        };
        let changed = fleet
            .get(&id)
            .is_none_or(|old| old.address != new.address || announcement.draining);
        fleet.insert(id, new);
        changed
    }

    /// The fleet's registrations now.
    pub fn of(&self, fleet_uid: &str) -> BTreeMap<InstanceId, Registration> {
        let by_fleet = self.by_fleet.lock().unwrap_or_else(|e| e.into_inner());
        by_fleet.get(fleet_uid).cloned().unwrap_or_default()
    }

    /// Drops the registrations of instances that no longer exist.
    pub fn retain(&self, fleet_uid: &str, keep: impl Fn(&InstanceId) -> bool) {
        let mut by_fleet = self.by_fleet.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fleet) = by_fleet.get_mut(fleet_uid) {
            fleet.retain(|id, _| keep(id));
        }
    }

    /// Forgets a deleted fleet.
    pub fn forget(&self, fleet_uid: &str) {
        let mut by_fleet = self.by_fleet.lock().unwrap_or_else(|e| e.into_inner());
        by_fleet.remove(fleet_uid);
    }
}
