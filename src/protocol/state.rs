//! What an agent tells the operator about itself, as typed contracts both
//! sides serialize and parse: its state as the control API reports it
//! (`GET /v1/state`, [`AgentState`]), and the announcements it sends on the
//! fleet's events queue ([`NodeAnnouncement`]: `node.registered` when it
//! starts serving, `node.heartbeat` periodically), which is how the operator
//! learns where each agent listens.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::ids::SessionId;

/// Version of the state document. A reader refuses a document with a
/// version it does not know rather than misread it; fields may be added
/// within a version (readers ignore fields they do not know).
pub const STATE_VERSION: u32 = 1;

/// `GET /v1/state`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The EC2 instance (or local id) the agent runs on.
    pub instance_id: String,
    /// The fleet, as `namespace/name`.
    pub fleet: String,
    /// The agent's build (`CARGO_PKG_VERSION`).
    pub agent_version: String,
    /// SHA-256 of the agent's executable, lower-case hex: reported once
    /// computed, when the fleet names an artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_sha256: Option<String>,
    /// Whether the agent takes no new sessions.
    pub draining: bool,
    /// Sessions it hosts at once.
    pub slots: u32,
    /// Slots free for new sessions.
    pub free_slots: u32,
    /// Since when the agent has served: its start.
    pub ready_since: Timestamp,
    /// Since when it has hosted no session; `None` while it hosts one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Timestamp>,
    /// The sessions it hosts, without their tokens.
    pub sessions: Vec<SessionState>,
    /// Messages of the request queue it has received and not yet deleted
    /// or given back: the part of the queue's in-flight count this agent
    /// explains. The operator counts only the rest of that count as demand
    /// no agent it can see holds, so a request is never counted both as in
    /// flight and as the slot reserved for it. Absent from older agents.
    #[serde(default)]
    pub held_requests: u32,
    /// The notice EC2 gave about this instance's end, once the agent has
    /// read one: it then takes no new sessions (`draining`). Absent from
    /// older agents; one this reader cannot read (a kind of notice added
    /// later) reads as absent rather than making the whole state unreadable.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "readable_or_none"
    )]
    pub interruption: Option<InterruptionNotice>,
}

/// A notice the instance metadata service gives before EC2 takes a spot
/// instance back, or when it recommends moving off one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InterruptionNotice {
    /// Which notice.
    pub kind: InterruptionKind,
    /// What EC2 will do (`terminate`, `stop`, `hibernate`); interruptions
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// When EC2 acts (an interruption) or when it made the recommendation
    /// (a rebalance).
    pub time: Timestamp,
}

/// A field that is `None` when its value is absent, null or not one this
/// build knows.
fn readable_or_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

/// The kinds of [`InterruptionNotice`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum InterruptionKind {
    /// `spot/instance-action`: the instance is taken back at `time`, about
    /// two minutes after the notice.
    SpotInterruption,
    /// `events/recommendations/rebalance`: the instance is at elevated risk
    /// of interruption; nothing happens to it by itself.
    RebalanceRecommendation,
}

/// One session in [`AgentState`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    pub id: SessionId,
    /// Where its life stands.
    pub phase: HostedPhase,
    /// Its browser's DevTools port, on 127.0.0.1.
    pub port: u16,
    /// Its browser's process id.
    pub pid: u32,
    /// When its browser started.
    pub started: Timestamp,
    /// When its TTL ends it.
    pub expires: Timestamp,
    /// Whether a client has used it.
    pub used: bool,
}

/// Where a session an agent hosts stands (the agent's view; a
/// BrowserSession's own phase is `api::session::SessionPhase`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum HostedPhase {
    /// Its browser is starting.
    Starting,
    /// Its browser answers DevTools.
    Active,
    /// It is being ended: its browser, port and profile are being released.
    Ending,
}

/// `node.registered` or `node.heartbeat`, on the fleet's events queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeAnnouncement {
    /// Protocol version, 1.
    pub version: u32,
    /// Which announcement.
    #[serde(rename = "type")]
    pub kind: AnnouncementKind,
    /// The fleet, as `namespace/name`.
    pub fleet: String,
    /// The instance the agent runs on.
    pub instance_id: String,
    /// Where its one listener is reached (`host:port`): on EC2 the private
    /// address from IMDS, off EC2 a loopback address.
    pub address: String,
    /// The agent's build.
    pub agent_version: String,
    /// Sessions it hosts at once.
    pub slots: u32,
    /// Sessions it hosts now, counting slots reserved for requests being
    /// started (a draining agent that reports none has drained).
    pub sessions: u32,
    /// Whether it takes no new sessions.
    pub draining: bool,
    /// When it was sent.
    pub at: Timestamp,
}

/// The kinds of [`NodeAnnouncement`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnouncementKind {
    /// Sent once, when the agent starts serving.
    #[serde(rename = "node.registered")]
    Registered,
    /// Sent every heartbeat interval after that.
    #[serde(rename = "node.heartbeat")]
    Heartbeat,
}

impl AnnouncementKind {
    /// The wire's `type`.
    pub fn type_name(self) -> &'static str {
        match self {
            AnnouncementKind::Registered => "node.registered",
            AnnouncementKind::Heartbeat => "node.heartbeat",
        }
    }
}

/// Why a state document cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not JSON of the expected shape.
    #[error("agent state is not a state document: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A version this reader does not know.
    #[error("agent state has version {found}; this reader knows version {STATE_VERSION}")]
    UnknownVersion {
        /// The document's version.
        found: u32,
    },
}

impl AgentState {
    /// Parses a state document, refusing versions this build does not know.
    pub fn parse(json: &[u8]) -> Result<AgentState, StateError> {
        let state: AgentState = serde_json::from_slice(json)?;
        if state.version != STATE_VERSION {
            return Err(StateError::UnknownVersion {
                found: state.version,
            });
        }
        Ok(state)
    }

    /// Sessions that hold a slot (every phase does until it is released).
    pub fn live_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Whether nothing on the agent could become a session: no session, no
    /// slot reserved for a request being started (a create just taken off
    /// the queue holds one before its session exists), no request message
    /// received and not yet deleted or given back. Only such an agent may
    /// be terminated as drained.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.free_slots >= self.slots && self.held_requests == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AgentState {
        AgentState {
            held_requests: 0,
            version: STATE_VERSION,
            instance_id: "i-0abc".into(),
            fleet: "team/fleet".into(),
            agent_version: "0.1.0".into(),
            artifact_sha256: None,
            draining: false,
            interruption: None,
            slots: 2,
            free_slots: 1,
            ready_since: Timestamp::from_second(1_700_000_000).unwrap(),
            idle_since: None,
            sessions: vec![SessionState {
                id: "s-1".parse().unwrap(),
                phase: HostedPhase::Active,
                port: 9300,
                pid: 42,
                started: Timestamp::from_second(1_700_000_100).unwrap(),
                expires: Timestamp::from_second(1_700_001_900).unwrap(),
                used: true,
            }],
        }
    }

    #[test]
    fn a_state_reads_back_as_written() {
        let json = serde_json::to_vec(&state()).unwrap();
        assert_eq!(AgentState::parse(&json).unwrap(), state());
        let text = String::from_utf8(json).unwrap();
        assert!(text.contains(r#""phase":"active""#), "{text}");
        assert!(!text.contains("idleSince"), "{text}");
        assert!(!text.contains("interruption"), "{text}");
    }

    #[test]
    fn an_interruption_notice_reads_back_as_written() {
        let mut noticed = state();
        noticed.draining = true;
        noticed.interruption = Some(InterruptionNotice {
            kind: InterruptionKind::SpotInterruption,
            action: Some("terminate".into()),
            time: Timestamp::from_second(1_700_000_120).unwrap(),
        });
        let json = serde_json::to_vec(&noticed).unwrap();
        assert_eq!(AgentState::parse(&json).unwrap(), noticed);
        let text = String::from_utf8(json).unwrap();
        assert!(text.contains(r#""kind":"spotInterruption""#), "{text}");
        // A kind this build does not know leaves the rest readable.
        let later = text.replace("spotInterruption", "scheduledMaintenance");
        let read = AgentState::parse(later.as_bytes()).unwrap();
        assert_eq!(read.interruption, None);
        assert!(read.draining);
    }

    #[test]
    fn announcements_carry_their_type_on_the_wire() {
        let announcement = NodeAnnouncement {
            version: 1,
            kind: AnnouncementKind::Registered,
            fleet: "team/fleet".into(),
            instance_id: "i-0abc".into(),
            address: "127.0.0.1:9900".into(),
            agent_version: "0.1.0".into(),
            slots: 4,
            sessions: 0,
            draining: false,
            at: Timestamp::from_second(1_700_000_000).unwrap(),
        };
        let json = serde_json::to_value(&announcement).unwrap();
        assert_eq!(json["type"], AnnouncementKind::Registered.type_name());
        assert_eq!(json["instanceId"], "i-0abc");
        let back: NodeAnnouncement = serde_json::from_value(json).unwrap();
        assert_eq!(back, announcement);
    }

    #[test]
    fn unknown_fields_are_ignored_and_unknown_versions_refused() {
        let mut value = serde_json::to_value(state()).unwrap();
        value["addedLater"] = true.into();
        assert!(AgentState::parse(value.to_string().as_bytes()).is_ok());
        value["version"] = 2.into();
        assert!(matches!(
            AgentState::parse(value.to_string().as_bytes()),
            Err(StateError::UnknownVersion { found: 2 })
        ));
        assert!(AgentState::parse(b"{\"version\":1}").is_err());
    }
}
