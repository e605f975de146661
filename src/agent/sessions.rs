//! The session table: every session hosted here with its slot and port, the
//! cancel tombstones, and the copy on disk. One lock guards the sessions,
//! the slot pool and the tombstones together, because several decisions span
//! them: a delete decides "not hosted" and records its tombstone in one step,
//! and a launch adds its session and looks for that tombstone in one step.
//!
//! The table is written to disk after every change, outside the lock and
//! numbered, so gateway lookups never wait for the disk and a later copy is
//! never overwritten by an earlier one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::egress::ChainGuard;
use super::process::{ExitWatch, ProcessExit, ProcessIdentity};
use super::profiles::{Profile, ProfileError};
use super::requesters::Requester;
use super::session_files::SessionFiles;
use super::slots::{PoolUsage, Port, PortState, SlotError, SlotPool};
use super::supervise::{BrowserHealth, Deadlines};
use super::table::{SavedTable, ServedSession, SessionRecord, TableError, TableFileStore};
use super::tombstones::Tombstones;
use crate::protocol::{HostedPhase, SessionId, SessionState, SessionToken, TerminationReason};

/// A session hosted here.
struct LiveSession {
    record: SessionRecord,
    phase: HostedPhase,
    /// The gateway token; `None` for a session adopted after a restart (the
    /// table keeps only its digest).
    token: Option<SessionToken>,
    /// Set by the gateway when a client connects.
    used: Arc<AtomicBool>,
    /// The exit of a browser this agent process started; `None` for a
    /// browser adopted after a restart (watched through its identity).
    exit: Option<ExitWatch>,
    profile: Profile,
    /// The listener of its chained proxy, if it has one; dropped (and so
    /// stopped) with the session.
    _chain: Option<ChainGuard>,
    /// Requesters of deletes that reached the session, answered when it
    /// ends (whoever ends it) besides the create's. Kept in memory only.
    deleters: Vec<Requester>,
}

impl LiveSession {
    /// Whether its create was answered `session.ready`: it became active
    /// (a browser path is recorded then), and the table notes the ready
    /// went out (`unanswered` is cleared just before the send).
    fn served(&self) -> bool {
        !self.record.browser_path.is_empty() && !self.record.unanswered
    }

    fn used(&self) -> bool {
        self.record.used || self.used.load(Ordering::Relaxed)
    }
}

struct State {
    pool: SlotPool<SessionId>,
    sessions: BTreeMap<SessionId, LiveSession>,
    /// Deletes of sessions not hosted here, which refuse a later create of
    /// the same id.
    tombstones: Tombstones,
    /// Sessions served here (they became active) and since ended: a later
    /// create of the same id is a redelivery, dropped, never started again.
    served: Tombstones,
    /// When the last session ended (or the agent started, before any).
    emptied: SystemTime,
}

/// What the gateway needs to reach one session's browser.
#[derive(Clone, Debug)]
pub struct GatewayRoute {
    /// The session.
    pub id: SessionId,
    /// Its browser's DevTools port.
    pub port: Port,
    /// SHA-256 (hex) of its token.
    pub token_sha256: String,
    /// Those of tokens given out after a restart ([`Sessions::with_token`]).
    pub more_token_sha256: Vec<String>,
    /// The files its client may touch, which the CDP filter confines it to.
    pub files: SessionFiles,
    used: Arc<AtomicBool>,
}

impl GatewayRoute {
    /// Whether a token whose SHA-256 (hex) is `digest` opens the session;
    /// compared in constant time.
    pub fn admits(&self, digest: &str) -> bool {
        std::iter::once(&self.token_sha256)
            .chain(&self.more_token_sha256)
            .fold(false, |admitted, known| {
                crate::agent::http::same_secret(digest, known) | admitted
            })
    }

    /// Records that a client used the session.
    pub fn mark_used(&self) {
        self.used.store(true, Ordering::Relaxed);
    }
}

/// An active session as its `session.ready` reply describes it.
#[derive(Clone, Debug)]
pub struct ActiveSession {
    /// Its record.
    pub record: SessionRecord,
    /// `None` once the agent restarted: only the digest was kept.
    pub token: Option<SessionToken>,
}

/// How full the table is, for `/v1/state`, announcements and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// The slot pool's counts.
    pub pool: PoolUsage,
    /// Sessions whose browser has not answered yet.
    pub starting: usize,
}

/// The table as `/v1/state` shows it.
#[derive(Clone, Debug)]
pub struct TableView {
    /// Slots and ports.
    pub pool: PoolUsage,
    /// When the last session ended, while none is hosted.
    pub idle_since: Option<SystemTime>,
    /// Every hosted session.
    pub sessions: Vec<SessionState>,
}

/// What the supervisor needs to judge one active session.
#[derive(Clone, Debug)]
pub struct SessionCheck {
    /// The session.
    pub id: SessionId,
    /// Its deadlines.
    pub deadlines: Deadlines,
    /// Its browser, as seen now.
    pub health: BrowserHealth,
    /// Whether a client used it, as far as the agent knows.
    pub used: bool,
    /// Its browser's DevTools port.
    pub port: Port,
    /// The page it was started on, which does not count as use.
    pub start_url: Option<String>,
}

/// A session that an end has claimed: no other end may take it, and the
/// caller must release what it holds.
#[derive(Debug)]
pub struct Claimed {
    /// The session's record.
    pub record: SessionRecord,
    /// Its profile.
    pub profile: Profile,
    /// Taken back after a restart before its requester was sent
    /// `session.ready`: nobody is to hear of its end, since its create
    /// comes back and starts afresh.
    pub unheard_of: bool,
}

/// Why an end could not claim a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unclaimed {
    /// Another caller is ending it.
    AlreadyEnding,
    /// No such session here.
    NotHosted,
}

/// What became of a saved session offered back to the table after a
/// restart.
#[derive(Debug)]
pub enum Adoption {
    /// Its browser runs on and holds its port again.
    Adopted,
    /// In the table only to be ended: its browser is gone or its port taken.
    ToEnd,
    /// Its profile could not be taken back: left out of the table.
    ProfileUnusable(ProfileError),
}

struct Snapshot {
    sequence: u64,
    table: SavedTable,
}

/// Most served sessions the table file keeps for a restarted agent, the
/// newest: a redelivery comes a visibility timeout after the receive, so the
/// recent ones are what count, and the file is written at every change.
const SERVED_SAVED: usize = 1000;

/// The session table of one agent.
pub struct Sessions {
    state: Mutex<State>,
    file: TableFileStore,
    /// Numbers snapshots, and the last one written.
    sequence: AtomicU64,
    written: Mutex<u64>,
    /// Wakes the intake when a slot frees.
    slot_freed: Notify,
    /// How long a reservation waits for its launch to report back.
    reservation_ttl: Duration,
}

impl Sessions {
    /// An empty table of `pool`'s slots, saved to `file`, idle since
    /// `made`.
    pub fn new(
        pool: SlotPool<SessionId>,
        file: TableFileStore,
        reservation_ttl: Duration,
        made: SystemTime,
    ) -> Self {
        Sessions {
            state: Mutex::new(State {
                pool,
                sessions: BTreeMap::new(),
                tombstones: Tombstones::default(),
                served: Tombstones::default(),
                emptied: made,
            }),
            file,
            sequence: AtomicU64::new(0),
            written: Mutex::new(0),
            slot_freed: Notify::new(),
            reservation_ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data behind (every
        // change is a single assignment), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Free slots now.
    pub fn free_slots(&self) -> usize {
        self.lock().pool.usage().free_slots()
    }

    /// Waits until a slot may have freed (or a short while passed).
    pub async fn slot_freed(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.slot_freed.notified()).await;
    }

    /// Reserves a slot and a port that is free at the OS for `owner`'s
    /// launch.
    pub fn reserve(&self, owner: &SessionId) -> Result<Port, SlotError> {
        let deadline = Instant::now() + self.reservation_ttl;
        self.lock()
            .pool
            .reserve(owner.clone(), deadline, port_is_free)
    }

    /// Gives back a reservation that will not be launched.
    pub fn unreserve(&self, owner: &SessionId, port: Port) {
        let _ = self.lock().pool.release(owner, port);
        self.slot_freed.notify_waiters();
    }

    /// Whether the port is held by anyone, for tests and `/v1/state`.
    pub fn port_state(&self, port: Port) -> Option<&'static str> {
        self.lock().pool.state(port).map(|s| match s {
            PortState::Free => "free",
            PortState::Reserved { .. } => "reserved",
            PortState::Active { .. } => "active",
        })
    }

    /// The gateway's view of an active session.
    pub fn route(&self, id: &SessionId) -> Option<GatewayRoute> {
        let state = self.lock();
        let session = state.sessions.get(id)?;
        (session.phase == HostedPhase::Active).then(|| GatewayRoute {
            id: id.clone(),
            port: session.record.port(),
            token_sha256: session.record.token_sha256.clone(),
            more_token_sha256: session.record.more_token_sha256.clone(),
            files: SessionFiles::of_profile(&session.record.profile_dir),
            used: session.used.clone(),
        })
    }

    /// Whether a session is hosted here, in any phase.
    pub fn hosts(&self, id: &SessionId) -> bool {
        self.lock().sessions.contains_key(id)
    }

    /// Whether a delete of `id` came while it was not hosted here, within
    /// the tombstone TTL: a create of it must be refused as `cancelled`.
    pub fn is_cancelled(&self, id: &SessionId) -> bool {
        self.lock().tombstones.contains(id, Instant::now())
    }

    /// Whether `id` was served here and has ended (within the tombstone
    /// TTL): a create of it is a redelivery.
    pub fn was_served(&self, id: &SessionId) -> bool {
        self.lock().served.contains(id, Instant::now())
    }

    /// Removes `id`'s tombstone once a create of it has been answered as
    /// `cancelled` (kept until then, so a create whose answer did not go
    /// out is refused again when it reappears).
    pub fn forget_cancel(&self, id: &SessionId) {
        self.lock().tombstones.forget(id);
    }

    /// Slots, ports and starting sessions.
    pub fn occupancy(&self) -> Occupancy {
        let state = self.lock();
        Occupancy {
            pool: state.pool.usage(),
            starting: state
                .sessions
                .values()
                .filter(|s| s.phase == HostedPhase::Starting)
                .count(),
        }
    }

    /// The table as `/v1/state` shows it.
    pub fn view(&self) -> TableView {
        let state = self.lock();
        TableView {
            pool: state.pool.usage(),
            idle_since: state.sessions.is_empty().then_some(state.emptied),
            sessions: state
                .sessions
                .values()
                .map(|s| SessionState {
                    id: s.record.id.clone(),
                    phase: s.phase,
                    port: s.record.port,
                    pid: s.record.process.pid,
                    started: timestamp(s.record.started),
                    expires: timestamp(s.record.expires),
                    used: s.used(),
                })
                .collect(),
        }
    }

    /// Adds a session whose browser was just spawned, as starting, and
    /// saves the table (so that an agent that dies during the start still
    /// knows the browser after its restart). Returns whether a delete of it
    /// came first: the caller must end it, since it holds a port and a
    /// profile all the same.
    pub fn add_starting(
        &self,
        record: SessionRecord,
        token: SessionToken,
        exit: ExitWatch,
        profile: Profile,
        chain: Option<ChainGuard>,
    ) -> bool {
        let id = record.id.clone();
        let (snapshot, cancelled) = {
            let mut state = self.lock();
            // A delete between the intake's check and here found the
            // session not hosted and left a tombstone.
            let cancelled = state.tombstones.contains(&id, Instant::now());
            state.sessions.insert(
                id,
                LiveSession {
                    record,
                    phase: HostedPhase::Starting,
                    token: Some(token),
                    used: Arc::new(AtomicBool::new(false)),
                    exit: Some(exit),
                    profile,
                    _chain: chain,
                    deleters: Vec::new(),
                },
            );
            (self.snapshot(&state), cancelled)
        };
        self.persist(snapshot);
        cancelled
    }

    /// Marks a starting session active once its browser answered at
    /// `browser_path`, and saves the table. Fails when the session was ended
    /// meanwhile or its reservation lapsed.
    pub fn activate(
        &self,
        id: &SessionId,
        port: Port,
        browser_path: String,
    ) -> Result<ActiveSession, String> {
        let mut state = self.lock();
        state
            .pool
            .activate(id, port, Instant::now())
            .map_err(|e| e.to_string())?;
        let session = state
            .sessions
            .get_mut(id)
            .ok_or("session ended during its start")?;
        if session.phase != HostedPhase::Starting {
            return Err("session ended during its start".into());
        }
        session.phase = HostedPhase::Active;
        session.record.browser_path = browser_path;
        let active = ActiveSession {
            record: session.record.clone(),
            token: session.token.clone(),
        };
        let snapshot = self.snapshot(&state);
        drop(state);
        self.persist(snapshot);
        Ok(active)
    }

    /// An active session with a token to hand out: its own, or, for one
    /// taken back after a restart (which does not keep tokens), a new one
    /// whose digest is saved beside the first: so a create of it that comes
    /// again is answered `session.ready` with the running browser (issue
    /// #28: it was answered `session.failed`, `sessionExists`, while the
    /// browser ran on). `None` when it is not active.
    pub fn with_token(&self, id: &SessionId) -> Option<ActiveSession> {
        let (active, snapshot) = {
            let mut state = self.lock();
            let session = state.sessions.get_mut(id)?;
            if session.phase != HostedPhase::Active {
                return None;
            }
            if session.token.is_some() {
                return Some(ActiveSession {
                    record: session.record.clone(),
                    token: session.token.clone(),
                });
            }
            let token = crate::agent::launch::command::new_token();
            session
                .record
                .more_token_sha256
                .push(super::table::token_digest(&token));
            session.token = Some(SessionToken::new(token));
            let active = ActiveSession {
                record: session.record.clone(),
                token: session.token.clone(),
            };
            (active, self.snapshot(&state))
        };
        self.persist(snapshot);
        Some(active)
    }

    /// Notes whether the requester of `id` was sent `session.ready`
    /// ([`SessionRecord::unanswered`]), and saves the table: only an
    /// answered session counts as served when it ends.
    pub fn set_answered(&self, id: &SessionId, answered: bool) {
        let snapshot = {
            let mut state = self.lock();
            let Some(session) = state.sessions.get_mut(id) else {
                return;
            };
            if session.record.unanswered != answered {
                return;
            }
            session.record.unanswered = !answered;
            self.snapshot(&state)
        };
        self.persist(snapshot);
    }

    /// Marks the session as ending for `reason`, unless another end has, so
    /// that a drain does not finish early and a second end (a delete racing
    /// the supervisor) sees it is already ending. The reason is saved with
    /// the table: an agent killed before the end is done leaves it to its
    /// successor (issue #28: a successor took such a session for crashed).
    pub fn claim_end(
        &self,
        id: &SessionId,
        reason: TerminationReason,
    ) -> Result<Claimed, Unclaimed> {
        let (claimed, snapshot) = {
            let mut state = self.lock();
            let Some(session) = state.sessions.get_mut(id) else {
                return Err(Unclaimed::NotHosted);
            };
            if session.phase == HostedPhase::Ending {
                return Err(Unclaimed::AlreadyEnding);
            }
            session.phase = HostedPhase::Ending;
            session.record.ending = Some(reason);
            let claimed = Claimed {
                record: session.record.clone(),
                profile: session.profile.clone(),
                // A session started here holds its token until it ends.
                unheard_of: session.record.unanswered && session.token.is_none(),
            };
            (claimed, self.snapshot(&state))
        };
        self.persist(snapshot);
        Ok(claimed)
    }

    /// Removes a claimed session once its browser and profile are gone:
    /// frees its port, saves the table, wakes the intake. Returns the
    /// requesters of the deletes that reached it, taken under the lock so
    /// that each is answered once.
    pub fn remove(&self, id: &SessionId, port: Port) -> Vec<Requester> {
        let (snapshot, deleters) = {
            let mut state = self.lock();
            if let Err(error) = state.pool.release(id, port) {
                tracing::warn!(session = %id, %error, "port was not held");
            }
            let removed = state.sessions.remove(id);
            if removed.as_ref().is_some_and(LiveSession::served) {
                state.served.record(id, Instant::now());
            }
            let deleters = removed.map(|s| s.deleters).unwrap_or_default();
            if state.sessions.is_empty() {
                state.emptied = SystemTime::now();
            }
            (self.snapshot(&state), deleters)
        };
        self.persist(snapshot);
        self.slot_freed.notify_waiters();
        deleters
    }

    /// A delete of `id`: when hosted, `deleter` (if it named targets) is
    /// answered by whichever end removes the session — this delete's, or
    /// one racing it (the supervisor's, say) — and true is returned;
    /// otherwise a tombstone is recorded and false returned.
    pub fn note_delete(&self, id: &SessionId, deleter: &Requester) -> bool {
        let mut state = self.lock();
        match state.sessions.get_mut(id) {
            Some(session) => {
                if deleter.has_targets() {
                    session.deleters.push(deleter.clone());
                }
                true
            }
            None => {
                state.tombstones.record(id, Instant::now());
                false
            }
        }
    }

    /// Drops lapsed tombstones and expires stale reservations, returning
    /// the expired ones.
    pub fn expire(&self, now: Instant) -> Vec<(Port, SessionId)> {
        let mut state = self.lock();
        state.tombstones.prune(now);
        state.served.prune(now);
        state.pool.expire(now)
    }

    /// The facts about every active session that the supervisor judges.
    /// `is_alive` answers for browsers adopted after a restart, whose exit
    /// this process cannot watch.
    pub fn checks(&self, is_alive: impl Fn(&ProcessIdentity) -> bool) -> Vec<SessionCheck> {
        let state = self.lock();
        state
            .sessions
            .values()
            .filter(|s| s.phase == HostedPhase::Active)
            .map(|s| {
                let health = match &s.exit {
                    Some(exit) => match exit.exited() {
                        None => BrowserHealth::Running,
                        Some(ProcessExit::Code(code)) => BrowserHealth::Exited(Some(code)),
                        Some(_) => BrowserHealth::Exited(None),
                    },
                    None if is_alive(&s.record.process) => BrowserHealth::Running,
                    None => BrowserHealth::Exited(None),
                };
                let r = &s.record;
                SessionCheck {
                    id: r.id.clone(),
                    deadlines: Deadlines {
                        started: r.started,
                        expires: r.expires,
                        ttl_was_cut: r.ttl_was_cut,
                        use_by: r.use_by,
                    },
                    health,
                    used: s.used(),
                    port: r.port(),
                    start_url: r.start_url.clone(),
                }
            })
            .collect()
    }

    /// Records that a client used the session (seen in its pages).
    pub fn mark_used(&self, id: &SessionId) {
        if let Some(session) = self.lock().sessions.get(id) {
            session.used.store(true, Ordering::Relaxed);
        }
    }

    /// Every hosted session and the number of launches under way (a
    /// reservation is a launch whose session is not in the table yet).
    pub fn remaining(&self) -> (Vec<SessionId>, usize) {
        let state = self.lock();
        let ids = state.sessions.keys().cloned().collect();
        (ids, state.pool.usage().reserved)
    }

    /// The browser processes of every session in the table.
    pub fn processes(&self) -> Vec<ProcessIdentity> {
        self.lock()
            .sessions
            .values()
            .map(|s| s.record.process)
            .collect()
    }

    /// The table saved by the previous agent; the sessions it served and
    /// that ended are taken back at once, so that a create of one delivered
    /// again is dropped here too (issue #28: an agent killed between its
    /// reply and its delete left the create to come back to its successor,
    /// which started it again). An unreadable file is moved aside for a
    /// person to look at, and the table starts empty: every browser of ours
    /// still running becomes an orphan. Fails only when the file cannot be
    /// moved aside.
    pub fn saved(&self) -> Result<Vec<SessionRecord>, TableError> {
        match self.file.load() {
            Ok(table) => {
                let now = Instant::now();
                let wall = jiff::Timestamp::now().as_second();
                let mut state = self.lock();
                // Oldest first: recording order is age order.
                for served in table.served.iter().rev() {
                    let age =
                        Duration::from_secs(wall.saturating_sub(served.ended_at).max(0) as u64);
                    state.served.record_aged(&served.id, age, now);
                }
                Ok(table.sessions)
            }
            Err(error) => {
                tracing::error!(%error, "session table unreadable; moving it aside");
                let aside = self.file.path().with_extension("json.unreadable");
                if let Err(error) = std::fs::rename(self.file.path(), &aside) {
                    tracing::error!(%error, "could not move the session table aside");
                    return Err(TableError::Io {
                        path: self.file.path().to_path_buf(),
                        source: error,
                    });
                }
                Ok(Vec::new())
            }
        }
    }

    /// Takes a saved session back after a restart: active when its browser
    /// is `alive` and its port can be held again, otherwise starting, only
    /// to be ended. The table is not saved here: see [`Sessions::save`].
    pub fn adopt(
        &self,
        record: SessionRecord,
        alive: bool,
        profile: Result<Profile, ProfileError>,
        chain: Option<ChainGuard>,
    ) -> Adoption {
        let mut state = self.lock();
        let taken = alive && state.pool.adopt(record.id.clone(), record.port()).is_ok();
        let profile = match profile {
            Ok(profile) => profile,
            Err(error) => return Adoption::ProfileUnusable(error),
        };
        let (phase, adoption) = if taken {
            (HostedPhase::Active, Adoption::Adopted)
        } else {
            (HostedPhase::Starting, Adoption::ToEnd)
        };
        state.sessions.insert(
            record.id.clone(),
            LiveSession {
                used: Arc::new(AtomicBool::new(record.used)),
                record,
                phase,
                token: None,
                exit: None,
                profile,
                _chain: chain,
                deleters: Vec::new(),
            },
        );
        adoption
    }

    /// Readies the table for the agent that takes over in place
    /// ([`super::handover`]): saves it with every client connection noted,
    /// and closes every chained proxy's listener so that the successor can
    /// open it again on the same port. The sessions stay in memory, but
    /// this agent ends none of them from now on.
    pub fn release_to_successor(&self) {
        let snapshot = {
            let mut state = self.lock();
            for session in state.sessions.values_mut() {
                session._chain = None;
            }
            self.snapshot(&state)
        };
        self.persist(snapshot);
    }

    /// Saves the table as it is.
    pub fn save(&self) {
        let snapshot = self.snapshot(&self.lock());
        self.persist(snapshot);
    }

    /// A copy of the table to persist, numbered so that a later copy is
    /// never overwritten by an earlier one.
    fn snapshot(&self, state: &State) -> Snapshot {
        let records = state
            .sessions
            .values()
            .map(|s| {
                let mut record = s.record.clone();
                record.used |= s.used.load(Ordering::Relaxed);
                record
            })
            .collect();
        let wall = jiff::Timestamp::now().as_second();
        let served = state
            .served
            .newest(SERVED_SAVED, Instant::now())
            .into_iter()
            .map(|(id, age)| ServedSession {
                id,
                ended_at: wall.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX)),
            })
            .collect();
        Snapshot {
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
            table: SavedTable {
                sessions: records,
                served,
            },
        }
    }

    fn persist(&self, snapshot: Snapshot) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if snapshot.sequence <= *written {
            return;
        }
        match self.file.save(&snapshot.table) {
            Ok(()) => *written = snapshot.sequence,
            // The sessions still run; only a restart would lose track of them.
            Err(error) => tracing::error!(%error, "session table not saved"),
        }
    }
}

/// A time as the protocol writes it.
pub fn timestamp(t: SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Whether nothing listens on the port on 127.0.0.1 (the browser's bind
/// would fail otherwise).
fn port_is_free(port: Port) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port.0)).is_ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::agent::profiles::ProfileStore;
    use crate::agent::replies::ReplyTargets;
    use crate::protocol::{ReplyQueueUrl, RequestId};

    const FIRST: Port = Port(47_311);

    fn table(dir: &Path, slots: usize) -> Sessions {
        Sessions::new(
            SlotPool::new(slots, FIRST, Port(FIRST.0 + 2)),
            TableFileStore::new(dir),
            Duration::from_secs(40),
            SystemTime::now(),
        )
    }

    fn id(text: &str) -> SessionId {
        text.parse().unwrap()
    }

    /// A session as the previous agent saved it, its browser on `port`.
    fn saved(dir: &Path, session: &str, port: Port) -> (SessionRecord, Profile) {
        let profiles = ProfileStore::new(dir.join("profiles"));
        let profile_dir = profiles.root().join("tmp").join(session);
        let profile = profiles.adopt(&profile_dir).unwrap();
        let now = SystemTime::now();
        let record = SessionRecord {
            id: id(session),
            request_id: None,
            port: port.0,
            token_sha256: "0".repeat(64),
            process: ProcessIdentity {
                pid: 4242,
                start_time: 1,
            },
            profile_dir,
            profile_temporary: true,
            browser_path: "/devtools/browser/x".into(),
            started: now,
            expires: now + Duration::from_secs(60),
            ttl_was_cut: false,
            use_by: now + Duration::from_secs(30),
            used: false,
            start_url: None,
            reply_to: None,
            callback_url: None,
            labels: BTreeMap::new(),
            chained_proxy: None,
            ending: None,
            unanswered: false,
            more_token_sha256: Vec::new(),
        };
        (record, profile)
    }

    fn deleter(request: &str) -> Requester {
        Requester {
            request_id: RequestId::new(request).ok(),
            targets: ReplyTargets {
                reply_to: ReplyQueueUrl::new("http://127.0.0.1:5000/123456789012/replies").ok(),
                callback_url: None,
            },
        }
    }

    #[test]
    fn a_delete_of_a_session_not_hosted_cancels_its_create_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = table(dir.path(), 1);
        assert!(!sessions.is_cancelled(&id("s-1")));
        assert!(!sessions.note_delete(&id("s-1"), &deleter("d-1")));
        assert!(sessions.is_cancelled(&id("s-1")));
        assert!(!sessions.is_cancelled(&id("s-2")));
        sessions.forget_cancel(&id("s-1"));
        assert!(!sessions.is_cancelled(&id("s-1")));
    }

    #[test]
    fn a_reservation_holds_a_slot_until_it_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = table(dir.path(), 1);
        let port = sessions.reserve(&id("s-1")).unwrap();
        assert_eq!(sessions.port_state(port), Some("reserved"));
        assert_eq!(sessions.free_slots(), 0);
        assert!(matches!(
            sessions.reserve(&id("s-2")),
            Err(SlotError::NoSlot { .. })
        ));
        assert_eq!(sessions.remaining(), (Vec::new(), 1));
        sessions.unreserve(&id("s-1"), port);
        assert_eq!(sessions.port_state(port), Some("free"));
        assert_eq!(sessions.free_slots(), 1);
    }

    #[test]
    fn one_end_claims_a_session_and_its_removal_answers_the_deletes_once() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = table(dir.path(), 2);
        let (record, profile) = saved(dir.path(), "s-1", FIRST);
        assert!(matches!(
            sessions.adopt(record, true, Ok(profile), None),
            Adoption::Adopted
        ));
        assert!(sessions.route(&id("s-1")).is_some());
        assert_eq!(sessions.port_state(FIRST), Some("active"));
        // A delete of a hosted session waits for the end, whoever ends it.
        assert!(sessions.note_delete(&id("s-1"), &deleter("d-1")));
        assert!(!sessions.is_cancelled(&id("s-1")));
        let claimed = sessions
            .claim_end(&id("s-1"), TerminationReason::Closed)
            .unwrap();
        assert_eq!(
            sessions
                .claim_end(&id("s-1"), TerminationReason::Closed)
                .unwrap_err(),
            Unclaimed::AlreadyEnding
        );
        // Still in the table while it ends, but no longer reachable.
        assert!(sessions.hosts(&id("s-1")));
        assert!(sessions.route(&id("s-1")).is_none());
        let deleters = sessions.remove(&id("s-1"), claimed.record.port());
        assert_eq!(deleters.len(), 1);
        assert!(sessions.remove(&id("s-1"), FIRST).is_empty());
        assert_eq!(
            sessions
                .claim_end(&id("s-1"), TerminationReason::Closed)
                .unwrap_err(),
            Unclaimed::NotHosted
        );
        assert_eq!(sessions.port_state(FIRST), Some("free"));
        assert!(sessions.view().idle_since.is_some());
        assert!(sessions.saved().unwrap().is_empty());
    }

    #[test]
    fn a_saved_session_whose_browser_is_gone_is_kept_only_to_be_ended() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = table(dir.path(), 2);
        let (record, profile) = saved(dir.path(), "s-1", FIRST);
        assert!(matches!(
            sessions.adopt(record, false, Ok(profile), None),
            Adoption::ToEnd
        ));
        assert!(sessions.hosts(&id("s-1")));
        assert!(sessions.route(&id("s-1")).is_none());
        assert!(sessions.checks(|_| true).is_empty());
        assert_eq!(sessions.port_state(FIRST), Some("free"));
        sessions.save();
        assert_eq!(sessions.saved().unwrap().len(), 1);
    }

    #[test]
    fn a_session_that_was_active_is_remembered_as_served_once_ended() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = table(dir.path(), 3);
        let ports = [FIRST, Port(FIRST.0 + 1), Port(FIRST.0 + 2)];
        let (alive, profile) = saved(dir.path(), "s-alive", ports[0]);
        sessions.adopt(alive, true, Ok(profile), None);
        let (died, profile) = saved(dir.path(), "s-died", ports[1]);
        sessions.adopt(died, false, Ok(profile), None);
        // Saved while its browser was still starting: never answered ready.
        let (starting, profile) = saved(dir.path(), "s-starting", ports[2]);
        let starting = SessionRecord {
            browser_path: String::new(),
            ..starting
        };
        sessions.adopt(starting, false, Ok(profile), None);
        for (session, port) in ["s-alive", "s-died", "s-starting"].into_iter().zip(ports) {
            assert!(!sessions.was_served(&id(session)), "{session} still hosted");
            assert!(
                sessions
                    .claim_end(&id(session), TerminationReason::Closed)
                    .is_ok()
            );
            sessions.remove(&id(session), port);
        }
        assert!(sessions.was_served(&id("s-alive")));
        assert!(sessions.was_served(&id("s-died")));
        assert!(!sessions.was_served(&id("s-starting")));

        // The next agent on this state directory knows them too.
        let next = table(dir.path(), 3);
        assert!(next.saved().unwrap().is_empty(), "no session hosted");
        assert!(next.was_served(&id("s-alive")));
        assert!(next.was_served(&id("s-died")));
        assert!(!next.was_served(&id("s-starting")));
    }

    #[test]
    fn the_table_keeps_the_newest_served_sessions_with_their_age() {
        let mut served = Tombstones::default();
        let now = Instant::now();
        for n in 0..5u64 {
            served.record_aged(
                &id(&format!("s-{n}")),
                Duration::from_secs(50 - n * 10),
                now,
            );
        }
        // Older than the tombstones' hour: forgotten.
        served.record_aged(&id("s-old"), Duration::from_secs(4000), now);
        let newest = served.newest(3, now);
        let ids: Vec<&str> = newest.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["s-4", "s-3", "s-2"]);
        assert_eq!(newest[0].1, Duration::from_secs(10));
        assert!(!served.contains(&id("s-old"), now));
    }
}
