//! The upgrade step: a changed `spec.agent.artifact` reaches the running
//! instances in place, through SSM Run Command, never by replacing them
//! (the launch hash leaves the artifact out, so it drifts nothing). New
//! instances get it through their user data.
//!
//! Each reconcile, on the status the report step made:
//! 1. the invocations still running are read (`GetCommandInvocation`);
//! 2. [`decide`] (pure) picks the ready instances whose agent reports
//!    another artifact and has no invocation for this one, at most
//!    `upgrade.maxConcurrency` running at once, none once more than
//!    `upgrade.maxErrors` failed;
//! 3. one command goes to them (`bootstrap::upgrade_commands`: download,
//!    digest check, restart of the agent, whose browsers live on and are
//!    re-adopted), and each instance's `bootstrap` records it;
//! 4. `upToDateInstances` and the `AgentsUpToDate` condition say where the
//!    rollout stands.
//!
//! An instance is up to date when its agent reports the artifact's SHA-256
//! as its own executable's: what runs, not what was sent. A command that
//! succeeded holds its place in the batch until then; one whose agent still
//! reports another artifact [`CONFIRM_WITHIN`] after it was sent counts as
//! failed (a restart that did not take, an agent that cannot read itself).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::fleet::{
    BootstrapStatus, BrowserFleetStatus, CommandState, InstanceState, InstanceStatus, UpgradeSpec,
};
use crate::api::{BrowserFleet, BrowserFleetSpec};
use crate::cloud::{CommandId, CommandRequest, CommandStatus, Commands, InstanceId, SsmError};
use crate::operator::bootstrap;
use crate::operator::conditions::{self, Wanted};
use crate::operator::context::Context;

/// The condition that says whether every ready agent runs the artifact.
pub const CONDITION_AGENTS_UP_TO_DATE: &str = "AgentsUpToDate";

/// Longest excerpt of a failed command's output kept in status.
const MESSAGE_LIMIT: usize = 200;

/// How long after an upgrade was sent its agent may take to report the new
/// artifact: a restart and one digest of the executable, with room for a
/// slow Windows logon.
pub const CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(300);

/// What the rollout does now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Instances to send the upgrade to now.
    pub send: Vec<String>,
    /// Ready instances whose agent runs the artifact.
    pub up_to_date: u32,
    /// Ready instances whose agent does not (yet).
    pub outdated: u32,
    /// Ready instances whose agent has not reported its artifact yet.
    pub unreported: u32,
    /// Invocations of this artifact that failed, on instances still outdated.
    pub failed: Vec<String>,
    /// Whether more than `maxErrors` failed: nothing more is sent.
    pub halted: bool,
}

/// Whether `instance`'s command for `desired` is running.
fn running_for<'a>(instance: &'a InstanceStatus, desired: &str) -> Option<&'a BootstrapStatus> {
    instance
        .bootstrap
        .as_ref()
        .filter(|b| b.artifact_sha256.as_deref() == Some(desired))
}

/// Who gets the upgrade now (pure; see the module's docs).
pub fn decide(desired: &str, instances: &[InstanceStatus], limits: &UpgradeSpec) -> Decision {
    let mut decision = Decision::default();
    let mut in_flight = 0usize;
    let mut candidates = Vec::new();
    for instance in instances.iter().filter(|i| i.state == InstanceState::Ready) {
        match instance.agent_artifact_sha256.as_deref() {
            Some(reported) if reported == desired => {
                decision.up_to_date += 1;
                continue;
            }
            // Not reported yet: an agent hashes its executable after it
            // starts. Unknown is not outdated; an upgrade sent now would
            // only install what it runs and reload it.
            None => {
                decision.unreported += 1;
                continue;
            }
            Some(_) => {}
        }
        decision.outdated += 1;
        match running_for(instance, desired).map(|b| b.state) {
            None => candidates.push(instance.instance_id.clone()),
            // Sent and done, the restarted agent not yet reporting: still
            // part of its batch.
            Some(CommandState::Pending | CommandState::InProgress | CommandState::Success) => {
                in_flight += 1
            }
            Some(CommandState::Failed | CommandState::TimedOut | CommandState::Cancelled) => {
                decision.failed.push(instance.instance_id.clone())
            }
        }
    }
    let max_errors = usize::try_from(limits.max_errors).unwrap_or(0);
    decision.halted = decision.failed.len() > max_errors;
    if !decision.halted {
        let room = usize::try_from(limits.max_concurrency)
            .unwrap_or(1)
            .saturating_sub(in_flight);
        decision.send = candidates.into_iter().take(room).collect();
    }
    decision
}

fn state_of(status: &CommandStatus) -> CommandState {
    match status {
        CommandStatus::Pending | CommandStatus::Delayed => CommandState::Pending,
        CommandStatus::Success => CommandState::Success,
        CommandStatus::Failed => CommandState::Failed,
        CommandStatus::TimedOut => CommandState::TimedOut,
        CommandStatus::Cancelled => CommandState::Cancelled,
        CommandStatus::InProgress | CommandStatus::Cancelling | CommandStatus::Other(_) => {
            CommandState::InProgress
        }
    }
}

fn is_running(state: CommandState) -> bool {
    matches!(state, CommandState::Pending | CommandState::InProgress)
}

/// The last line of a failed command's output, cut short.
fn excerpt(stderr: &str, stdout: &str) -> Option<String> {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(line[..line.floor_char_boundary(MESSAGE_LIMIT)].to_owned())
}

/// Runs the step on `status` (see the module's docs).
pub(super) async fn roll_out(
    fleet: &BrowserFleet,
    status: &mut BrowserFleetStatus,
    ctx: &Context,
    sent: &mut BTreeMap<String, BootstrapStatus>,
) {
    let spec: &BrowserFleetSpec = &fleet.spec;
    let Some(artifact) = &spec.agent.artifact else {
        status.up_to_date_instances = 0;
        status
            .conditions
            .retain(|c| c.type_ != CONDITION_AGENTS_UP_TO_DATE);
        return;
    };
    let desired = artifact.sha256.to_ascii_lowercase();
    remember_sent(status, sent);
    poll(status, ctx).await;
    unconfirmed_fail(status, &desired, jiff::Timestamp::now());
    let limits = &spec.agent.upgrade;
    let decision = decide(&desired, &status.instances, limits);
    let mut sending_failed = None;
    if !decision.send.is_empty()
        && let Some(document) = bootstrap::upgrade_commands(spec)
    {
        let request = CommandRequest {
            document,
            instance_ids: decision.send.iter().map(InstanceId::new).collect(),
            comment: Some(format!("browserfleet: agent {}", short(&desired))),
            delivery_timeout: None,
            max_concurrency: u32::try_from(limits.max_concurrency).ok(),
            max_errors: u32::try_from(limits.max_errors).ok(),
        };
        match ctx.ssm.send_command(&request).await {
            Ok(command) => {
                tracing::info!(%command, instances = ?decision.send, "upgrading agents");
                record_sent(status, &decision.send, &command, &desired);
            }
            // Not yet an SSM managed node: the next reconcile tries again.
            Err(SsmError::NotFound(what)) => {
                tracing::info!(%what, "instances not yet managed by SSM; upgrade later")
            }
            Err(error) => {
                tracing::warn!(%error, "cannot send the agent upgrade");
                sending_failed = Some(error.to_string());
            }
        }
    }
    sent.retain(|id, _| status.instances.iter().any(|i| &i.instance_id == id));
    for instance in &status.instances {
        if let Some(bootstrap) = &instance.bootstrap {
            sent.insert(instance.instance_id.clone(), bootstrap.clone());
        }
    }
    status.up_to_date_instances = i32::try_from(decision.up_to_date).unwrap_or(i32::MAX);
    let wanted = condition(&desired, &decision, status, limits, sending_failed);
    status.conditions = conditions::merge(
        &status.conditions,
        &[wanted],
        fleet.metadata.generation,
        &Time(jiff::Timestamp::now()),
    );
}

/// Puts back the upgrade this process last sent to an instance when the
/// status read lacks it or records an earlier one: the status may be older
/// than this process's last write.
fn remember_sent(status: &mut BrowserFleetStatus, sent: &BTreeMap<String, BootstrapStatus>) {
    for instance in &mut status.instances {
        let Some(remembered) = sent.get(&instance.instance_id) else {
            continue;
        };
        let older = instance.bootstrap.as_ref().is_none_or(|b| {
            b.command_id != remembered.command_id
                && b.sent_at.as_ref().map(|t| t.0) < remembered.sent_at.as_ref().map(|t| t.0)
        });
        if older {
            instance.bootstrap = Some(remembered.clone());
        }
    }
}

/// Reads every invocation still running into its instance's status.
async fn poll(status: &mut BrowserFleetStatus, ctx: &Context) {
    for instance in &mut status.instances {
        let Some(bootstrap) = instance.bootstrap.as_mut() else {
            continue;
        };
        if !is_running(bootstrap.state) {
            continue;
        }
        let command = CommandId::new(bootstrap.command_id.clone());
        let id = InstanceId::new(instance.instance_id.as_str());
        match ctx.ssm.invocation(&command, &id).await {
            Ok(invocation) => {
                bootstrap.state = state_of(&invocation.status);
                if !is_running(bootstrap.state) && bootstrap.state != CommandState::Success {
                    bootstrap.message = excerpt(&invocation.stderr, &invocation.stdout);
                }
            }
            Err(error) => {
                tracing::debug!(instance = %id, %error, "cannot read the upgrade's invocation")
            }
        }
    }
}

/// Marks failed each upgrade to `desired` that succeeded more than
/// [`CONFIRM_WITHIN`] after it was sent while its ready agent still reports
/// another artifact. An upgrade without a send time (recorded by an older
/// operator) is timed from now.
fn unconfirmed_fail(status: &mut BrowserFleetStatus, desired: &str, now: jiff::Timestamp) {
    for instance in &mut status.instances {
        let reports = instance.agent_artifact_sha256.clone();
        if instance.state != InstanceState::Ready || reports.as_deref() == Some(desired) {
            continue;
        }
        let Some(bootstrap) = instance.bootstrap.as_mut() else {
            continue;
        };
        if bootstrap.artifact_sha256.as_deref() != Some(desired)
            || bootstrap.state != CommandState::Success
        {
            continue;
        }
        let sent = bootstrap.sent_at.get_or_insert(Time(now)).0;
        if super::plan::since(now, sent) >= CONFIRM_WITHIN {
            bootstrap.state = CommandState::Failed;
            bootstrap.message = Some(format!(
                "the command succeeded, but {}s later the agent still reports artifact {}",
                CONFIRM_WITHIN.as_secs(),
                reports.as_deref().map_or("(none)", short)
            ));
        }
    }
}

fn record_sent(
    status: &mut BrowserFleetStatus,
    sent: &[String],
    command: &CommandId,
    desired: &str,
) {
    for instance in &mut status.instances {
        if sent.contains(&instance.instance_id) {
            instance.bootstrap = Some(BootstrapStatus {
                command_id: command.as_str().to_owned(),
                artifact_sha256: Some(desired.to_owned()),
                state: CommandState::Pending,
                message: None,
                sent_at: Some(Time(jiff::Timestamp::now())),
            });
        }
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

fn condition(
    desired: &str,
    decision: &Decision,
    status: &BrowserFleetStatus,
    limits: &UpgradeSpec,
    sending_failed: Option<String>,
) -> Wanted {
    let artifact = short(desired);
    let ready = decision.up_to_date + decision.outdated + decision.unreported;
    if decision.outdated == 0 && decision.unreported > 0 {
        return Wanted::new(
            CONDITION_AGENTS_UP_TO_DATE,
            false,
            "Upgrading",
            format!(
                "{} of {ready} ready instances run agent {artifact}; {} not yet reported",
                decision.up_to_date, decision.unreported
            ),
        );
    }
    if decision.outdated == 0 {
        return Wanted::new(
            CONDITION_AGENTS_UP_TO_DATE,
            true,
            "UpToDate",
            format!("every ready instance ({ready}) runs agent {artifact}"),
        );
    }
    if decision.halted {
        let why: Vec<String> = status
            .instances
            .iter()
            .filter(|i| decision.failed.contains(&i.instance_id))
            .map(|i| {
                let message = i.bootstrap.as_ref().and_then(|b| b.message.clone());
                format!(
                    "{}: {}",
                    i.instance_id,
                    message.unwrap_or_else(|| "failed".into())
                )
            })
            .collect();
        return Wanted::new(
            CONDITION_AGENTS_UP_TO_DATE,
            false,
            "UpgradeFailed",
            format!(
                "{} upgrades failed (maxErrors {}); the rollout stopped: {}",
                decision.failed.len(),
                limits.max_errors,
                why.join("; ")
            ),
        );
    }
    let mut message = format!(
        "{} of {ready} ready instances run agent {artifact}; upgrading in batches of {}",
        decision.up_to_date, limits.max_concurrency
    );
    if let Some(error) = sending_failed {
        message.push_str(&format!("; sending failed: {error}"));
    }
    Wanted::new(CONDITION_AGENTS_UP_TO_DATE, false, "Upgrading", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(
        id: &str,
        state: InstanceState,
        runs: &str,
        sent: Option<(&str, CommandState)>,
    ) -> InstanceStatus {
        let mut status: InstanceStatus = serde_json::from_value(serde_json::json!({
            "instanceId": id,
            "state": "Ready",
        }))
        .expect("instance");
        status.state = state;
        status.agent_artifact_sha256 = Some(runs.to_owned());
        status.bootstrap = sent.map(|(artifact, state)| BootstrapStatus {
            command_id: "c".into(),
            artifact_sha256: Some(artifact.to_owned()),
            state,
            message: None,
            sent_at: None,
        });
        status
    }

    fn limits(max_concurrency: i32, max_errors: i32) -> UpgradeSpec {
        UpgradeSpec {
            max_concurrency,
            max_errors,
        }
    }

    #[test]
    fn outdated_ready_instances_go_a_batch_at_a_time() {
        let instances = [
            instance("i-1", InstanceState::Ready, "v1", None),
            instance("i-2", InstanceState::Ready, "v1", None),
            instance("i-3", InstanceState::Ready, "v2", None),
            instance("i-4", InstanceState::Draining, "v1", None),
            instance(
                "i-5",
                InstanceState::Ready,
                "v1",
                Some(("v1", CommandState::Success)),
            ),
        ];
        let decision = decide("v2", &instances, &limits(2, 0));
        assert_eq!(decision.send, ["i-1", "i-2"]);
        assert_eq!((decision.up_to_date, decision.outdated), (1, 3));
        // One running: one more goes.
        let mut instances = instances.to_vec();
        instances[0].bootstrap = Some(BootstrapStatus {
            command_id: "c".into(),
            artifact_sha256: Some("v2".into()),
            state: CommandState::InProgress,
            message: None,
            sent_at: None,
        });
        assert_eq!(decide("v2", &instances, &limits(2, 0)).send, ["i-2"]);
        // Done but its agent not yet reporting: not sent again, and still
        // part of its batch.
        instances[0].bootstrap.as_mut().unwrap().state = CommandState::Success;
        assert_eq!(decide("v2", &instances, &limits(2, 0)).send, ["i-2"]);
        assert!(decide("v2", &instances, &limits(1, 0)).send.is_empty());
        // Reporting: the batch has room again.
        instances[0].agent_artifact_sha256 = Some("v2".into());
        assert_eq!(decide("v2", &instances, &limits(1, 0)).send, ["i-2"]);
    }

    #[test]
    fn a_success_the_agent_never_confirms_fails_after_the_grace() {
        let t0: jiff::Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let mut status = BrowserFleetStatus {
            instances: vec![instance(
                "i-1",
                InstanceState::Ready,
                "v1",
                Some(("v2", CommandState::Success)),
            )],
            ..Default::default()
        };
        // No send time (an older operator's record): timed from now.
        unconfirmed_fail(&mut status, "v2", t0);
        let bootstrap = status.instances[0].bootstrap.clone().unwrap();
        assert_eq!(bootstrap.state, CommandState::Success);
        assert_eq!(bootstrap.sent_at, Some(Time(t0)));
        let later = |seconds: i64| t0 + jiff::SignedDuration::from_secs(seconds);
        unconfirmed_fail(&mut status, "v2", later(299));
        assert_eq!(
            status.instances[0].bootstrap.as_ref().unwrap().state,
            CommandState::Success
        );
        unconfirmed_fail(&mut status, "v2", later(300));
        let failed = status.instances[0].bootstrap.clone().unwrap();
        assert_eq!(failed.state, CommandState::Failed);
        assert!(
            failed
                .message
                .as_deref()
                .unwrap()
                .contains("still reports artifact v1"),
            "{failed:?}"
        );
        let decision = decide("v2", &status.instances, &limits(1, 0));
        assert!(decision.halted, "{decision:?}");
        // One whose agent reports the artifact is left alone.
        let mut confirmed = BrowserFleetStatus {
            instances: vec![instance(
                "i-2",
                InstanceState::Ready,
                "v2",
                Some(("v2", CommandState::Success)),
            )],
            ..Default::default()
        };
        unconfirmed_fail(&mut confirmed, "v2", later(3600));
        assert_eq!(
            confirmed.instances[0].bootstrap.as_ref().unwrap().state,
            CommandState::Success
        );
    }

    #[test]
    fn more_failures_than_max_errors_stop_the_rollout() {
        let instances = [
            instance(
                "i-1",
                InstanceState::Ready,
                "v1",
                Some(("v2", CommandState::Failed)),
            ),
            instance("i-2", InstanceState::Ready, "v1", None),
        ];
        let stopped = decide("v2", &instances, &limits(1, 0));
        assert!(stopped.halted && stopped.send.is_empty());
        assert_eq!(stopped.failed, ["i-1"]);
        let tolerated = decide("v2", &instances, &limits(1, 1));
        assert!(!tolerated.halted);
        assert_eq!(tolerated.send, ["i-2"]);
    }

    #[test]
    fn a_failed_commands_last_line_is_its_message() {
        assert_eq!(
            excerpt("curl: (22) 404\nbrowserfleet: not installed\n", ""),
            Some("browserfleet: not installed".into())
        );
        assert_eq!(excerpt("", "only out\n"), Some("only out".into()));
        assert_eq!(excerpt(" ", ""), None);
    }

    #[test]
    fn an_upgrade_this_process_sent_is_put_back_into_a_status_read_that_lacks_it() {
        let sent_at = |s: i64| {
            Some(Time(
                jiff::Timestamp::from_second(1_700_000_000 + s).unwrap(),
            ))
        };
        let remembered = BootstrapStatus {
            command_id: "c-2".into(),
            artifact_sha256: Some("v2".into()),
            state: CommandState::Success,
            message: None,
            sent_at: sent_at(20),
        };
        let memory = BTreeMap::from([("i-1".to_owned(), remembered.clone())]);
        let mut status = BrowserFleetStatus {
            instances: vec![instance("i-1", InstanceState::Ready, "v1", None)],
            ..Default::default()
        };
        remember_sent(&mut status, &memory);
        assert_eq!(status.instances[0].bootstrap, Some(remembered.clone()));
        // An earlier command in the status read is replaced too...
        status.instances[0].bootstrap = Some(BootstrapStatus {
            command_id: "c-1".into(),
            sent_at: sent_at(10),
            ..remembered.clone()
        });
        remember_sent(&mut status, &memory);
        assert_eq!(status.instances[0].bootstrap, Some(remembered.clone()));
        // ...a later one (another operator's, say) is not.
        let later = BootstrapStatus {
            command_id: "c-3".into(),
            sent_at: sent_at(30),
            ..remembered
        };
        status.instances[0].bootstrap = Some(later.clone());
        remember_sent(&mut status, &memory);
        assert_eq!(status.instances[0].bootstrap, Some(later));
        // With it, the instance is in its batch, not sent again.
        let decision = decide("v2", &status.instances, &limits(1, 0));
        assert!(decision.send.is_empty(), "{decision:?}");
    }

    #[test]
    fn an_agent_that_has_not_reported_its_artifact_yet_gets_no_upgrade() {
        let mut starting = instance("i-1", InstanceState::Ready, "v2", None);
        starting.agent_artifact_sha256 = None;
        let decision = decide("v2", &[starting], &limits(1, 0));
        assert!(decision.send.is_empty(), "{decision:?}");
        assert_eq!(decision.up_to_date, 0);
    }
}
