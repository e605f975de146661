//! EC2's notices about this instance's end. The metadata service publishes
//! `spot/instance-action` about two minutes before EC2 takes a spot
//! instance back, and `events/recommendations/rebalance` when the instance
//! is at elevated risk of that; both answer 404 until then, and AWS asks
//! that they be polled every five seconds. A notice drains the agent
//! ([`Agent::take_notice`]) and is announced at once, so that the operator
//! launches a replacement without waiting for its next look.

use std::sync::Arc;
use std::time::Duration;

use aws_config::imds;
use jiff::Timestamp;
use serde::Deserialize;
use thiserror::Error;

use super::imds::{ImdsError, get_optional};
use super::runtime::Agent;
use crate::cloud::queues::Queues;
use crate::protocol::{AnnouncementKind, InterruptionKind, InterruptionNotice};

/// How often the notices are read: AWS's recommendation.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

const INSTANCE_ACTION: &str = "spot/instance-action";
const REBALANCE: &str = "events/recommendations/rebalance";

/// Why no notice could be read.
#[derive(Debug, Error)]
pub enum NoticeError {
    /// The service did not answer as it should.
    #[error(transparent)]
    Imds(#[from] Box<ImdsError>),
    /// It answered with something that is not a notice.
    #[error("{what} is not a notice ({body:?}): {reason}")]
    Malformed {
        what: &'static str,
        body: String,
        reason: String,
    },
}

/// `spot/instance-action`: `{"action": "terminate", "time": "…Z"}`.
#[derive(Deserialize)]
struct InstanceAction {
    action: String,
    time: String,
}

/// `events/recommendations/rebalance`: `{"noticeTime": "…Z"}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rebalance {
    notice_time: String,
}

fn malformed(what: &'static str, body: &str, reason: impl ToString) -> NoticeError {
    NoticeError::Malformed {
        what,
        body: body.chars().take(200).collect(),
        reason: reason.to_string(),
    }
}

fn timestamp(what: &'static str, body: &str, value: &str) -> Result<Timestamp, NoticeError> {
    value
        .parse::<Timestamp>()
        .map_err(|error| malformed(what, body, error))
}

/// Reads a `spot/instance-action` document.
pub fn parse_instance_action(body: &str) -> Result<InterruptionNotice, NoticeError> {
    let action: InstanceAction =
        serde_json::from_str(body).map_err(|error| malformed(INSTANCE_ACTION, body, error))?;
    Ok(InterruptionNotice {
        kind: InterruptionKind::SpotInterruption,
        time: timestamp(INSTANCE_ACTION, body, &action.time)?,
        action: Some(action.action),
    })
}

/// Reads an `events/recommendations/rebalance` document.
pub fn parse_rebalance(body: &str) -> Result<InterruptionNotice, NoticeError> {
    let rebalance: Rebalance =
        serde_json::from_str(body).map_err(|error| malformed(REBALANCE, body, error))?;
    Ok(InterruptionNotice {
        kind: InterruptionKind::RebalanceRecommendation,
        time: timestamp(REBALANCE, body, &rebalance.notice_time)?,
        action: None,
    })
}

/// The notice pending now, if any; an interruption before a rebalance
/// recommendation.
pub async fn look(client: &imds::Client) -> Result<Option<InterruptionNotice>, NoticeError> {
    if let Some(body) = get_optional(client, INSTANCE_ACTION)
        .await
        .map_err(Box::new)?
    {
        return parse_instance_action(&body).map(Some);
    }
    match get_optional(client, REBALANCE).await.map_err(Box::new)? {
        Some(body) => parse_rebalance(&body).map(Some),
        None => Ok(None),
    }
}

/// Reads the notices once and hands a new one to the agent, which then
/// tells the operator.
pub async fn look_once<Q: Queues + 'static>(
    agent: &Agent<Q>,
    client: &imds::Client,
) -> Result<(), NoticeError> {
    if let Some(notice) = look(client).await?
        && agent.take_notice(notice)
    {
        agent.announce(AnnouncementKind::Heartbeat).await;
    }
    Ok(())
}

/// Reads the notices every [`POLL_INTERVAL`] until the agent stops. A
/// service that does not answer is reported once per outage, not every
/// poll.
pub async fn watch<Q: Queues + 'static>(agent: Arc<Agent<Q>>, client: imds::Client) {
    let mut stopping = agent.stopping();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once, and [`look_once`] has just looked.
    tick.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.changed() => {}
        }
        if *stopping.borrow() {
            return;
        }
        let looked = look_once(&agent, &client).await;
        match &looked {
            Ok(()) if failing => tracing::info!("EC2's notices are readable again"),
            Err(error) if !failing => {
                tracing::warn!(%error, "cannot read EC2's notices; trying again every 5 s")
            }
            _ => {}
        }
        failing = looked.is_err();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_action_is_an_interruption_at_its_time() {
        let notice =
            parse_instance_action(r#"{"action": "terminate", "time": "2026-12-07T08:22:00Z"}"#)
                .unwrap();
        assert_eq!(notice.kind, InterruptionKind::SpotInterruption);
        assert_eq!(notice.action.as_deref(), Some("terminate"));
        assert_eq!(notice.time, "2026-12-07T08:22:00Z".parse().unwrap());
    }

    #[test]
    fn a_rebalance_recommendation_has_no_action() {
        let notice = parse_rebalance(r#"{"noticeTime": "2026-12-07T08:17:00Z"}"#).unwrap();
        assert_eq!(notice.kind, InterruptionKind::RebalanceRecommendation);
        assert_eq!(notice.action, None);
        assert_eq!(notice.time, "2026-12-07T08:17:00Z".parse().unwrap());
    }

    #[test]
    fn what_is_not_a_notice_is_refused_with_what_it_was() {
        for body in [
            "",
            "terminate",
            r#"{"action": "terminate"}"#,
            r#"{"action": "terminate", "time": "soon"}"#,
        ] {
            let error = parse_instance_action(body).unwrap_err().to_string();
            assert!(error.contains(INSTANCE_ACTION), "{error}");
        }
        assert!(parse_rebalance(r#"{"time": "2026-12-07T08:17:00Z"}"#).is_err());
    }
}
