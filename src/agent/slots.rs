//! Slots and DevTools ports: how many sessions an agent hosts at once and
//! which local port each browser listens on.
//!
//! Every port of the range moves FREE → RESERVED (owner, deadline) → ACTIVE →
//! FREE. A reservation is taken before a launch and turned ACTIVE once the
//! browser answers; a failed launch releases it, and a reservation whose
//! launch never reported back expires at its deadline, so a crashed launch
//! task cannot hold a port forever. At most `slots` ports are RESERVED or
//! ACTIVE together. The pool is plain data: the agent keeps it under one lock,
//! and the OS check ("is this port really free?") is a closure the caller
//! passes, so the state machine is tested without sockets.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use thiserror::Error;

/// A local TCP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u16);

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where one port is in its cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortState<O> {
    /// Nobody holds it.
    Free,
    /// Held for a launch that has not finished; free again after `deadline`.
    Reserved {
        /// The session launching on it.
        owner: O,
        /// When the reservation lapses.
        deadline: Instant,
    },
    /// A live browser listens on it.
    Active {
        /// The session it belongs to.
        owner: O,
    },
}

/// Why a port could not be taken or moved.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SlotError {
    /// Every slot is reserved or active.
    #[error("no free slot: all {slots} are in use")]
    NoSlot {
        /// Slot count of the agent.
        slots: usize,
    },
    /// Slots are free, but every free port of the range is taken at the OS
    /// (by another program).
    #[error("no free port in the range: the free ones are busy at the OS")]
    NoPort,
    /// The port is not held by this owner in the state the call expects (a
    /// reservation that expired, or somebody else's port).
    #[error("port {port} is not {expected} by this session")]
    NotHeld {
        /// The port.
        port: Port,
        /// The state the caller expected.
        expected: &'static str,
    },
    /// The owner already holds a port (a duplicate request for a session
    /// that is starting).
    #[error("this session already holds a port")]
    AlreadyHeld,
    /// The port is not in the pool's range.
    #[error("port {0} is outside the browser port range")]
    OutOfRange(Port),
}

/// Counts of a pool, for `/v1/state` and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Slot count.
    pub slots: usize,
    /// Ports in the range.
    pub ports: usize,
    /// Reserved ports.
    pub reserved: usize,
    /// Active ports.
    pub active: usize,
}

impl PoolUsage {
    /// Slots neither reserved nor active.
    pub fn free_slots(&self) -> usize {
        self.slots.saturating_sub(self.reserved + self.active)
    }
}

/// The slot and port pool of one agent.
#[derive(Clone, Debug)]
pub struct SlotPool<O> {
    slots: usize,
    ports: BTreeMap<Port, PortState<O>>,
    /// Where the next search for a free port starts: rotating through the
    /// range keeps a just-released port (whose old browser may still be
    /// closing its socket) out of use for as long as possible.
    cursor: u16,
}

impl<O: Clone + Eq + fmt::Debug> SlotPool<O> {
    /// A pool of `slots` slots over the inclusive port range `first..=last`.
    pub fn new(slots: usize, first: Port, last: Port) -> Self {
        let ports = (first.0..=last.0)
            .map(|p| (Port(p), PortState::Free))
            .collect();
        SlotPool {
            slots,
            ports,
            cursor: first.0,
        }
    }

    /// The counts of the pool.
    pub fn usage(&self) -> PoolUsage {
        let mut usage = PoolUsage {
            slots: self.slots,
            ports: self.ports.len(),
            ..PoolUsage::default()
        };
        for state in self.ports.values() {
            match state {
                PortState::Free => {}
                PortState::Reserved { .. } => usage.reserved += 1,
                PortState::Active { .. } => usage.active += 1,
            }
        }
        usage
    }

    /// The state of one port.
    pub fn state(&self, port: Port) -> Option<&PortState<O>> {
        self.ports.get(&port)
    }

    /// Every port with its state.
    pub fn ports(&self) -> impl Iterator<Item = (Port, &PortState<O>)> {
        self.ports.iter().map(|(p, s)| (*p, s))
    }

    /// Reserves a slot and a port for `owner` until `deadline`. Ports are
    /// tried in rotation from after the last one handed out; `free_at_os`
    /// says whether nothing else listens on a port (the range may overlap
    /// another program's ports), and busy ones are skipped.
    pub fn reserve(
        &mut self,
        owner: O,
        deadline: Instant,
        mut free_at_os: impl FnMut(Port) -> bool,
    ) -> Result<Port, SlotError> {
        if self.usage().free_slots() == 0 {
            return Err(SlotError::NoSlot { slots: self.slots });
        }
        // One port per owner: a second create for a session that is still
        // starting waits instead of starting a second browser.
        if self.ports.values().any(|state| match state {
            PortState::Free => false,
            PortState::Reserved { owner: o, .. } | PortState::Active { owner: o } => *o == owner,
        }) {
            return Err(SlotError::AlreadyHeld);
        }
        let candidates: Vec<Port> = self
            .ports
            .range(Port(self.cursor)..)
            .chain(self.ports.range(..Port(self.cursor)))
            .filter(|(_, state)| matches!(state, PortState::Free))
            .map(|(port, _)| *port)
            .collect();
        for port in candidates {
            if free_at_os(port) {
                self.ports
                    .insert(port, PortState::Reserved { owner, deadline });
                self.cursor = port.0.wrapping_add(1);
                return Ok(port);
            }
        }
        Err(SlotError::NoPort)
    }

    /// Turns `owner`'s reservation of `port` into an active port. Fails when
    /// the reservation expired (the port may have gone to someone else).
    pub fn activate(&mut self, owner: &O, port: Port, now: Instant) -> Result<(), SlotError> {
        match self.ports.get_mut(&port) {
            Some(state @ PortState::Reserved { .. }) => {
                let PortState::Reserved {
                    owner: holder,
                    deadline,
                } = &*state
                else {
                    unreachable!("matched Reserved above");
                };
                if holder != owner || *deadline <= now {
                    return Err(SlotError::NotHeld {
                        port,
                        expected: "reserved",
                    });
                }
                *state = PortState::Active {
                    owner: owner.clone(),
                };
                Ok(())
            }
            Some(_) => Err(SlotError::NotHeld {
                port,
                expected: "reserved",
            }),
            None => Err(SlotError::OutOfRange(port)),
        }
    }

    /// Marks `port` active for `owner` directly: a browser found alive after
    /// an agent restart. Fails when the port is held by someone else.
    pub fn adopt(&mut self, owner: O, port: Port) -> Result<(), SlotError> {
        let state = self
            .ports
            .get_mut(&port)
            .ok_or(SlotError::OutOfRange(port))?;
        match state {
            PortState::Free => {
                *state = PortState::Active { owner };
                Ok(())
            }
            PortState::Active { owner: holder } | PortState::Reserved { owner: holder, .. }
                if *holder == owner =>
            {
                *state = PortState::Active { owner };
                Ok(())
            }
            _ => Err(SlotError::NotHeld {
                port,
                expected: "free",
            }),
        }
    }

    /// Frees `port` if `owner` holds it (reserved or active). Releasing a port
    /// that is already free or held by another session is an error and
    /// changes nothing, so a late release can never free a successor's port.
    pub fn release(&mut self, owner: &O, port: Port) -> Result<(), SlotError> {
        let state = self
            .ports
            .get_mut(&port)
            .ok_or(SlotError::OutOfRange(port))?;
        match state {
            PortState::Reserved { owner: holder, .. } | PortState::Active { owner: holder }
                if holder == owner =>
            {
                *state = PortState::Free;
                Ok(())
            }
            _ => Err(SlotError::NotHeld {
                port,
                expected: "held",
            }),
        }
    }

    /// Frees every reservation whose deadline has passed and returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<(Port, O)> {
        let mut expired = Vec::new();
        for (port, state) in self.ports.iter_mut() {
            if let PortState::Reserved { owner, deadline } = state
                && *deadline <= now
            {
                expired.push((*port, owner.clone()));
                *state = PortState::Free;
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pool(slots: usize, ports: u16) -> SlotPool<&'static str> {
        SlotPool::new(slots, Port(9000), Port(9000 + ports - 1))
    }

    #[test]
    fn a_port_goes_free_reserved_active_free() {
        let now = Instant::now();
        let mut pool = pool(2, 4);
        let port = pool
            .reserve("a", now + Duration::from_secs(5), |_| true)
            .unwrap();
        assert!(matches!(pool.state(port), Some(PortState::Reserved { .. })));
        pool.activate(&"a", port, now).unwrap();
        assert_eq!(pool.state(port), Some(&PortState::Active { owner: "a" }));
        pool.release(&"a", port).unwrap();
        assert_eq!(pool.state(port), Some(&PortState::Free));
    }

    #[test]
    fn slots_limit_reservations_even_with_ports_left() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut pool = pool(2, 10);
        pool.reserve("a", deadline, |_| true).unwrap();
        pool.reserve("b", deadline, |_| true).unwrap();
        assert_eq!(
            pool.reserve("c", deadline, |_| true),
            Err(SlotError::NoSlot { slots: 2 })
        );
    }

    #[test]
    fn one_owner_holds_one_port() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut pool = pool(3, 3);
        pool.reserve("a", deadline, |_| true).unwrap();
        assert_eq!(
            pool.reserve("a", deadline, |_| true),
            Err(SlotError::AlreadyHeld)
        );
    }

    #[test]
    fn ports_busy_at_the_os_are_skipped() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut pool = pool(3, 3);
        let port = pool.reserve("a", deadline, |p| p != Port(9000)).unwrap();
        assert_eq!(port, Port(9001));
        assert_eq!(
            pool.reserve("b", deadline, |_| false),
            Err(SlotError::NoPort)
        );
        // The failed attempt left nothing behind.
        assert_eq!(pool.usage().reserved, 1);
    }

    #[test]
    fn an_expired_reservation_frees_the_port_and_cannot_be_activated() {
        let now = Instant::now();
        let mut pool = pool(1, 2);
        let port = pool
            .reserve("a", now + Duration::from_secs(1), |_| true)
            .unwrap();
        let later = now + Duration::from_secs(2);
        assert_eq!(pool.expire(later), vec![(port, "a")]);
        assert!(pool.activate(&"a", port, later).is_err());
        assert_eq!(pool.usage().free_slots(), 1);
    }

    #[test]
    fn a_late_release_never_frees_someone_elses_port() {
        let now = Instant::now();
        let mut pool = pool(1, 1);
        let port = pool
            .reserve("a", now + Duration::from_secs(1), |_| true)
            .unwrap();
        pool.expire(now + Duration::from_secs(2));
        let again = pool
            .reserve("b", now + Duration::from_secs(9), |_| true)
            .unwrap();
        assert_eq!(port, again);
        assert!(pool.release(&"a", port).is_err());
        assert!(matches!(
            pool.state(port),
            Some(PortState::Reserved { owner: "b", .. })
        ));
    }

    #[test]
    fn ports_rotate_so_a_released_port_rests() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut pool = pool(1, 3);
        let first = pool.reserve("a", deadline, |_| true).unwrap();
        pool.release(&"a", first).unwrap();
        let second = pool.reserve("b", deadline, |_| true).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn adoption_takes_a_free_port_only() {
        let mut pool = pool(2, 2);
        pool.adopt("a", Port(9000)).unwrap();
        assert!(pool.adopt("b", Port(9000)).is_err());
        assert_eq!(
            pool.adopt("b", Port(9999)),
            Err(SlotError::OutOfRange(Port(9999)))
        );
    }

    mod interleavings {
        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::*;

        /// One step of a session's life, as the agent's tasks would take it.
        #[derive(Clone, Debug)]
        enum Step {
            Reserve(u8),
            Activate(u8),
            Release(u8),
            Crash(u8),
            Tick(u8),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (0u8..8).prop_map(Step::Reserve),
                (0u8..8).prop_map(Step::Activate),
                (0u8..8).prop_map(Step::Release),
                (0u8..8).prop_map(Step::Crash),
                (0u8..4).prop_map(Step::Tick),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

            /// Whatever the order of reserve, activate, release, expiry and
            /// crashes: a port has one owner, no session holds two ports, the
            /// slot limit holds, the pool agrees with what the sessions
            /// believe they hold, and once everyone is gone nothing is left.
            #[test]
            fn no_two_owners_and_nothing_leaks(
                slots in 1usize..5,
                ports in 1u16..7,
                steps in proptest::collection::vec(step(), 1..120),
            ) {
                let start = Instant::now();
                let mut now = start;
                let lease = Duration::from_secs(3);
                let mut pool: SlotPool<u8> = SlotPool::new(slots, Port(100), Port(100 + ports - 1));
                // What each session believes: its port and whether it is active.
                let mut held: HashMap<u8, (Port, bool)> = HashMap::new();
                for step in steps {
                    match step {
                        Step::Reserve(s) if !held.contains_key(&s) => {
                            if let Ok(port) = pool.reserve(s, now + lease, |p| p.0 % 5 != 3) {
                                held.insert(s, (port, false));
                            }
                        }
                        Step::Reserve(_) => {}
                        Step::Activate(s) => {
                            if let Some((port, active)) = held.get_mut(&s)
                                && pool.activate(&s, *port, now).is_ok()
                            {
                                *active = true;
                            }
                        }
                        Step::Release(s) | Step::Crash(s) => {
                            if let Some((port, _)) = held.remove(&s) {
                                // An expired reservation may already be gone.
                                let _ = pool.release(&s, port);
                            }
                        }
                        Step::Tick(seconds) => {
                            now += Duration::from_secs(u64::from(seconds));
                            for (port, owner) in pool.expire(now) {
                                prop_assert_eq!(held.remove(&owner), Some((port, false)));
                            }
                        }
                    }
                    let usage = pool.usage();
                    prop_assert!(usage.reserved + usage.active <= slots);
                    let mut owners: HashMap<u8, Port> = HashMap::new();
                    for (port, state) in pool.ports() {
                        let owner = match state {
                            PortState::Free => continue,
                            PortState::Reserved { owner, .. } | PortState::Active { owner } => *owner,
                        };
                        prop_assert!(owners.insert(owner, port).is_none(), "{} holds two ports", owner);
                    }
                    let believed: HashMap<u8, Port> = held.iter().map(|(s, (p, _))| (*s, *p)).collect();
                    prop_assert_eq!(&owners, &believed);
                }
                for (s, (port, _)) in held.drain() {
                    prop_assert!(pool.release(&s, port).is_ok());
                }
                prop_assert_eq!(pool.usage().reserved + pool.usage().active, 0);
            }
        }
    }
}
