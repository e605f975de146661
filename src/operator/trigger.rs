//! How anything that notices a change asks the fleet controller for a
//! reconcile of one fleet now: the events-queue consumer, the depth poll,
//! the session reconciler.

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;

use crate::api::BrowserFleet;

/// Asks the fleet controller for a reconcile of a fleet.
#[derive(Clone)]
pub struct FleetTrigger(UnboundedSender<ObjectRef<BrowserFleet>>);

impl FleetTrigger {
    /// A trigger on the channel the fleet controller reads.
    pub fn new(channel: UnboundedSender<ObjectRef<BrowserFleet>>) -> Self {
        FleetTrigger(channel)
    }

    /// Asks for a reconcile of `fleet` (dropped when the controller stopped).
    pub fn reconcile(&self, fleet: &ObjectRef<BrowserFleet>) {
        let _ = self.0.unbounded_send(fleet.clone());
    }
}
