//! Cancel tombstones: deletes of sessions this agent does not host, kept for
//! a while so that a create of such a session that arrives later is refused
//! (`session.failed`, `cancelled`) instead of started.
//!
//! A requester that gives up on a create sends a delete, which may reach an
//! agent before the create does (the operator broadcasts it to every agent
//! of the fleet; the create still waits on the queue). The agent that then
//! takes the create must not start a browser nobody waits for.
//!
//! Tombstones live in memory only: an agent restart forgets them, and a
//! create taken after the restart starts (its start deadline, when it has
//! one, still refuses it once passed).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::protocol::SessionId;

/// How long a tombstone refuses a create. Longer than any start deadline the
/// operator sets (at most one hour after the request): a create still
/// waiting after that is refused as `startTimeout` anyway, so keeping the
/// tombstone longer would only cost memory.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

/// Most tombstones kept; beyond it the oldest is dropped, so that a flood of
/// deletes for unknown sessions cannot grow the agent's memory without
/// bound (10,000 ids are about a megabyte).
pub const MAX_TOMBSTONES: usize = 10_000;

/// The `message` of a create refused as `cancelled`.
pub const CANCELLED_MESSAGE: &str = "the session was deleted before it started: a delete of it \
     reached this agent before the create, so no browser was started";

/// Session ids deleted while not hosted here, each with when it was
/// recorded; at most `capacity` of them, none older than `ttl`.
///
/// Times are [`Instant`]s, so the store expects `now` never to go back.
#[derive(Debug)]
pub struct Tombstones {
    ttl: Duration,
    capacity: usize,
    /// Each id's sequence number in `order`, and when it was recorded.
    by_id: HashMap<SessionId, (u64, Instant)>,
    /// Ids by recording order, oldest first.
    order: BTreeMap<u64, SessionId>,
    next: u64,
}

impl Default for Tombstones {
    fn default() -> Self {
        Tombstones::new(TOMBSTONE_TTL, MAX_TOMBSTONES)
    }
}

impl Tombstones {
    /// An empty store keeping at most `capacity` tombstones for `ttl` each.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Tombstones {
            ttl,
            capacity,
            by_id: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }

    /// Records a delete of `id` at `now`; a second delete of the same id
    /// starts its time again. Drops expired tombstones, then the oldest ones
    /// beyond the capacity.
    pub fn record(&mut self, id: &SessionId, now: Instant) {
        self.forget(id);
        let sequence = self.next;
        self.next += 1;
        self.by_id.insert(id.clone(), (sequence, now));
        self.order.insert(sequence, id.clone());
        self.prune(now);
        while self.by_id.len() > self.capacity {
            self.drop_oldest();
        }
    }

    /// The live tombstones, newest first, at most `most` of them, each with
    /// its age at `now`: what a restarted agent takes back
    /// ([`Tombstones::record_aged`]).
    pub fn newest(&self, most: usize, now: Instant) -> Vec<(SessionId, Duration)> {
        self.order
            .values()
            .rev()
            .filter_map(|id| {
                let (_, recorded) = self.by_id.get(id)?;
                (!self.expired(*recorded, now))
                    .then(|| (id.clone(), now.saturating_duration_since(*recorded)))
            })
            .take(most)
            .collect()
    }

    /// Records `id` as recorded `age` before `now` (a tombstone an earlier
    /// agent kept). Take them oldest first: recording order is age order.
    pub fn record_aged(&mut self, id: &SessionId, age: Duration, now: Instant) {
        if age >= self.ttl {
            return;
        }
        let recorded = now.checked_sub(age).unwrap_or(now);
        self.record(id, recorded);
    }

    /// Whether `id` has a tombstone younger than the TTL at `now`.
    pub fn contains(&self, id: &SessionId, now: Instant) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|(_, recorded)| !self.expired(*recorded, now))
    }

    /// Removes `id`'s tombstone, if any.
    pub fn forget(&mut self, id: &SessionId) {
        if let Some((sequence, _)) = self.by_id.remove(id) {
            self.order.remove(&sequence);
        }
    }

    /// Drops every tombstone older than the TTL at `now`.
    pub fn prune(&mut self, now: Instant) {
        // Recording order is age order, so the expired ones are at the front.
        while let Some((_, id)) = self.order.first_key_value() {
            let expired = self
                .by_id
                .get(id)
                .is_none_or(|(_, recorded)| self.expired(*recorded, now));
            if !expired {
                break;
            }
            self.drop_oldest();
        }
    }

    /// Tombstones kept now (expired ones not yet pruned included).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn expired(&self, recorded: Instant, now: Instant) -> bool {
        now.saturating_duration_since(recorded) >= self.ttl
    }

    fn drop_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_first() {
            self.by_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: usize) -> SessionId {
        format!("s-{n}").parse().unwrap()
    }

    #[test]
    fn a_tombstone_refuses_until_its_ttl_passes() {
        let start = Instant::now();
        let mut store = Tombstones::new(Duration::from_secs(60), 10);
        store.record(&id(1), start);
        assert!(store.contains(&id(1), start + Duration::from_secs(59)));
        assert!(!store.contains(&id(1), start + Duration::from_secs(60)));
        assert!(!store.contains(&id(2), start));
    }

    #[test]
    fn a_forgotten_tombstone_refuses_nothing() {
        let start = Instant::now();
        let mut store = Tombstones::new(Duration::from_secs(60), 10);
        store.record(&id(1), start);
        store.record(&id(2), start);
        store.forget(&id(1));
        assert!(!store.contains(&id(1), start));
        assert!(store.contains(&id(2), start));
        store.forget(&id(2));
        store.forget(&id(3));
        assert!(store.is_empty());
    }

    #[test]
    fn expired_tombstones_are_pruned_and_young_ones_kept() {
        let start = Instant::now();
        let mut store = Tombstones::new(Duration::from_secs(60), 10);
        store.record(&id(1), start);
        store.record(&id(2), start + Duration::from_secs(30));
        store.prune(start + Duration::from_secs(60));
        assert_eq!(store.len(), 1);
        assert!(store.contains(&id(2), start + Duration::from_secs(60)));
        // Recording prunes too.
        store.record(&id(3), start + Duration::from_secs(100));
        assert_eq!(store.len(), 1);
        assert!(store.contains(&id(3), start + Duration::from_secs(100)));
    }

    #[test]
    fn beyond_the_capacity_the_oldest_is_dropped() {
        let start = Instant::now();
        let mut store = Tombstones::new(Duration::from_secs(60), 3);
        for n in 0..5 {
            store.record(&id(n), start + Duration::from_secs(n as u64));
        }
        let now = start + Duration::from_secs(5);
        assert_eq!(store.len(), 3);
        assert!(!store.contains(&id(0), now) && !store.contains(&id(1), now));
        assert!((2..5).all(|n| store.contains(&id(n), now)));
    }

    #[test]
    fn a_second_delete_restarts_the_time_and_makes_it_the_youngest() {
        let start = Instant::now();
        let mut store = Tombstones::new(Duration::from_secs(60), 2);
        store.record(&id(1), start);
        store.record(&id(2), start + Duration::from_secs(1));
        store.record(&id(1), start + Duration::from_secs(50));
        assert_eq!(store.len(), 2);
        assert!(store.contains(&id(1), start + Duration::from_secs(100)));
        // The oldest is now s-2.
        store.record(&id(3), start + Duration::from_secs(51));
        let now = start + Duration::from_secs(52);
        assert!(!store.contains(&id(2), now));
        assert!(store.contains(&id(1), now) && store.contains(&id(3), now));
    }

    #[test]
    fn the_default_store_keeps_deletes_an_hour_and_ten_thousand_of_them() {
        let start = Instant::now();
        let mut store = Tombstones::default();
        for n in 0..MAX_TOMBSTONES + 10 {
            store.record(&id(n), start);
        }
        assert_eq!(store.len(), MAX_TOMBSTONES);
        assert!(!store.contains(&id(9), start));
        assert!(store.contains(&id(10), start + Duration::from_secs(3599)));
        store.prune(start + Duration::from_secs(3600));
        assert!(store.is_empty());
    }

    #[derive(Clone, Debug)]
    enum Step {
        Record(usize),
        /// A create of this id: refused when tombstoned, then forgotten.
        Refuse(usize),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..20usize).prop_map(Step::Record),
            (0..20usize).prop_map(Step::Refuse),
            (0..30u64).prop_map(Step::Wait),
        ]
    }

    proptest! {
        /// The store agrees with a plain model (id → last recording time)
        /// on every id that the capacity has not pushed out, and never
        /// holds more than its capacity.
        #[test]
        fn the_store_matches_a_model_and_stays_bounded(steps in prop::collection::vec(step(), 0..200)) {
            let ttl = Duration::from_secs(60);
            let capacity = 8;
            let start = Instant::now();
            let mut now = start;
            let mut store = Tombstones::new(ttl, capacity);
            // id → (recording number, time)
            let mut model: HashMap<usize, (u64, Instant)> = HashMap::new();
            let mut recorded = 0u64;
            for step in steps {
                match step {
                    Step::Record(n) => {
                        store.record(&id(n), now);
                        recorded += 1;
                        model.insert(n, (recorded, now));
                        model.retain(|_, (_, at)| now.duration_since(*at) < ttl);
                        // Keep the model's `capacity` most recently recorded.
                        let mut ages: Vec<(u64, usize)> =
                            model.iter().map(|(n, (number, _))| (*number, *n)).collect();
                        ages.sort();
                        for (_, oldest) in ages.iter().take(model.len().saturating_sub(capacity)) {
                            model.remove(oldest);
                        }
                    }
                    Step::Refuse(n) => {
                        let expected = model
                            .remove(&n)
                            .is_some_and(|(_, at)| now.duration_since(at) < ttl);
                        prop_assert_eq!(store.contains(&id(n), now), expected);
                        store.forget(&id(n));
                    }
                    Step::Wait(seconds) => now += Duration::from_secs(seconds),
                }
                prop_assert!(store.len() <= capacity);
                prop_assert_eq!(store.by_id.len(), store.order.len());
            }
        }
    }
}
