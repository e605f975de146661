//! Drift and lifetime: which instances are to be replaced, and the next step
//! of each replacement. Pure, like the rest of the plan.
//!
//! An instance is **drifted** when it was launched with something the fleet
//! no longer launches with (its launch-hash tag differs from the current
//! blueprint's, or its instance type or subnet is no longer listed), and
//! **expired** when it is older than `spec.disruption.expireAfter`. Either
//! way it is replaced, one step per reconcile, level-triggered:
//!
//! 1. a replacement is launched (its status says which instance it
//!    `replaces`) while fewer than the budget's replacements are in
//!    progress, within `maxInstances` + budget;
//! 2. until the original is drained, the replacement *stands in* beside it:
//!    the scaling policy sees only the original, so the swap neither grows
//!    nor shrinks the fleet in the policy's eyes, and the policy never
//!    cancels a replacement as excess;
//! 3. once the replacement is ready, the original is drained — unless the
//!    ready instances left would have fewer slots than the fleet's demand;
//! 4. the original is terminated by the ordinary drain rules: when its agent
//!    reports no session, or at `drainTimeoutSeconds`. A session is never
//!    cut short by a replacement.
//!
//! A replacement that fails (never registers, stops answering) is
//! terminated by the ordinary rules; its original then has no replacement
//! and gets a new one. Whatever holds a replacement back is reported as
//! [`ReplacementWaiting`], the first one met.

use std::collections::BTreeSet;

use super::{Assessed, Drain, DrainReason, Observed, since};
use crate::api::BrowserFleetSpec;
use crate::api::disruption::{DisruptionBudget, DisruptionReason, ReplacementWaiting};
use crate::api::fleet::InstanceState;
use crate::cloud::{FleetInstance, InstanceId};

/// Why `instance`, as EC2 lists it, is to be replaced, if it is.
pub(super) fn judge(
    spec: &BrowserFleetSpec,
    observed: &Observed,
    instance: &FleetInstance,
) -> Option<DisruptionReason> {
    let launched_with_another_spec = match (&observed.launch_hash, instance.launch_hash()) {
        (Some(current), Some(tagged)) => *current != tagged,
        // An instance of an operator before the tag: what it was launched
        // with is unknown, and taking it for drifted would replace every
        // fleet right after an upgrade. `expireAfter` rolls such instances.
        _ => false,
    };
    let type_gone = instance
        .instance_type
        .as_ref()
        .is_some_and(|t| !spec.instance.instance_types.contains(t));
    let subnet_gone = instance
        .subnet_id
        .as_ref()
        .is_some_and(|s| !spec.instance.subnet_ids.contains(s));
    if launched_with_another_spec || type_gone || subnet_gone {
        return Some(DisruptionReason::Drifted);
    }
    let launched = instance
        .launch_time
        .and_then(|t| jiff::Timestamp::try_from(t).ok())?;
    let lifetime = spec.disruption.expire_after()?;
    (since(observed.now, launched) >= lifetime).then_some(DisruptionReason::Expired)
}

/// Marks each instance EC2 lists (`assessed` in the listing's order) that
/// is to be replaced, in its status and in the policy's view of it.
pub(super) fn mark(spec: &BrowserFleetSpec, observed: &Observed, assessed: &mut [Assessed]) {
    for (a, instance) in assessed.iter_mut().zip(&observed.instances) {
        let leaving = a.terminate.is_some() || a.status.state == InstanceState::Terminating;
        let reason = if leaving {
            None
        } else {
            judge(spec, observed, instance)
        };
        a.status.disruption = reason;
        if let Some(view) = &mut a.view {
            view.disrupted = reason.is_some();
        }
    }
}

fn alive(a: &Assessed) -> bool {
    a.terminate.is_none() && a.status.state != InstanceState::Terminating
}

/// The live replacement of instance `original`, if any.
fn replacement_of<'a>(assessed: &'a [Assessed], original: &str) -> Option<&'a Assessed> {
    assessed.iter().find(|a| {
        alive(a) && a.status.state.is_capacity() && a.status.replaces.as_deref() == Some(original)
    })
}

/// Replacements standing in beside an original that is still ready: the
/// scaling policy does not see them (it sees their originals).
pub(super) fn standing_in(assessed: &[Assessed]) -> BTreeSet<String> {
    assessed
        .iter()
        .filter(|original| {
            alive(original)
                && original.status.state == InstanceState::Ready
                && original.status.disruption.is_some()
        })
        .filter_map(|original| replacement_of(assessed, &original.status.instance_id))
        .map(|replacement| replacement.status.instance_id.clone())
        .collect()
}

/// What this reconcile does about drifted and expired instances.
#[derive(Debug, Default)]
pub(super) struct Replacements {
    /// Originals a replacement is launched for now, in launch order.
    pub launch_for: Vec<InstanceId>,
    /// Originals drained now: their replacement is ready.
    pub drain: Vec<Drain>,
    /// What holds the first one back, if anything does.
    pub waiting: Option<ReplacementWaiting>,
}

/// The fleet around the replacements, as this reconcile leaves it.
pub(super) struct Fleet<'a> {
    pub assessed: &'a [Assessed],
    /// Instances the scaling policy drains now (they go, not replaced).
    pub retiring: &'a [InstanceId],
    /// Sessions the fleet must host now or soon (the policy's demand).
    pub demand: u32,
    /// Instances EC2 lists or that were just launched, as `maxInstances`
    /// counts them.
    pub existing: u32,
    /// Instances the policy launches now.
    pub policy_launch: u32,
    /// Why no launch may be made now, if none may.
    pub launches_held: Option<&'static str>,
}

/// The next step of every replacement, oldest original first.
pub(super) fn replace(spec: &BrowserFleetSpec, fleet: &Fleet<'_>) -> Replacements {
    if spec.paused {
        return Replacements::default();
    }
    let standing = standing_in(fleet.assessed);
    let live: Vec<&Assessed> = fleet.assessed.iter().filter(|a| alive(a)).collect();
    let size = live
        .iter()
        .filter(|a| !standing.contains(&a.status.instance_id))
        .count();
    let budget = spec
        .disruption
        .budget()
        .unwrap_or(DisruptionBudget::Count(0));
    let allowed = budget.allowed(u32::try_from(size).unwrap_or(u32::MAX));
    let mut in_progress = live
        .iter()
        .filter(|a| {
            a.status.disruption.is_some()
                && matches!(
                    a.status.state,
                    InstanceState::Ready | InstanceState::Draining
                )
                && replacement_of(fleet.assessed, &a.status.instance_id).is_some()
        })
        .count();
    let in_progress_at_start = in_progress;
    let ceiling = u32::try_from(spec.capacity.max_instances)
        .unwrap_or(0)
        .saturating_add(allowed);
    let mut room = ceiling.saturating_sub(fleet.existing.saturating_add(fleet.policy_launch));
    let retiring = |id: &str| fleet.retiring.iter().any(|r| r.as_str() == id);
    let mut serving = u32::try_from(
        live.iter()
            .filter(|a| a.status.state == InstanceState::Ready && !retiring(&a.status.instance_id))
            .count(),
    )
    .unwrap_or(u32::MAX);
    let slots = u32::try_from(spec.capacity.sessions_per_instance)
        .unwrap_or(1)
        .max(1);

    let mut originals: Vec<&Assessed> = live
        .iter()
        .copied()
        .filter(|a| a.status.state == InstanceState::Ready && !retiring(&a.status.instance_id))
        .filter(|a| a.status.disruption.is_some())
        .collect();
    originals.sort_by(|a, b| {
        (&a.status.launch_time, &a.status.instance_id)
            .cmp(&(&b.status.launch_time, &b.status.instance_id))
    });
    let (mut launch_for, mut drain, mut waiting) = (Vec::new(), Vec::new(), None);
    let mut wait = |reason: &str, message: String| {
        if waiting.is_none() {
            waiting = Some(ReplacementWaiting {
                reason: reason.to_owned(),
                message,
            });
        }
    };
    for original in originals {
        let id = &original.status.instance_id;
        let why = original
            .status
            .disruption
            .unwrap_or(DisruptionReason::Drifted);
        let what = format!("{id} ({})", why.describe());
        match replacement_of(fleet.assessed, id) {
            Some(replacement) if replacement.status.state == InstanceState::Ready => {
                let by = &replacement.status.instance_id;
                // Ready means registered: it has an address.
                let Some(address) = &original.status.address else {
                    continue;
                };
                let left = serving.saturating_sub(1).saturating_mul(slots);
                if left >= fleet.demand {
                    serving -= 1;
                    drain.push(Drain {
                        instance: InstanceId::new(id),
                        address: address.clone(),
                        why: DrainReason::Replaced {
                            by: InstanceId::new(by),
                            because: why,
                        },
                    });
                } else {
                    wait(
                        "CapacityInUse",
                        format!(
                            "{what} is not drained yet: its replacement {by} is ready, but the \
                             other ready instances' {left} slots are fewer than the fleet's \
                             demand of {} sessions",
                            fleet.demand
                        ),
                    );
                }
            }
            Some(replacement) => wait(
                "ReplacementNotReady",
                format!(
                    "{what} waits for its replacement {} to become ready",
                    replacement.status.instance_id
                ),
            ),
            None if allowed == 0 => wait(
                "BudgetZero",
                format!(
                    "{what} is not replaced: spec.disruption.budget {:?} allows no replacement",
                    spec.disruption.budget
                ),
            ),
            None if in_progress >= usize::try_from(allowed).unwrap_or(usize::MAX) => wait(
                "BudgetExhausted",
                format!(
                    "{what} waits: {in_progress_at_start} replacements are in progress, as \
                     many as spec.disruption.budget {:?} allows at once ({allowed})",
                    spec.disruption.budget
                ),
            ),
            None if fleet.launches_held.is_some() => wait(
                "LaunchesHeld",
                format!("{what} waits: {}", fleet.launches_held.unwrap_or_default()),
            ),
            None if room == 0 => wait(
                "InstanceLimit",
                format!(
                    "{what} waits: the fleet has {} instances, as many as maxInstances {} + \
                     the budget's {allowed} allow during a replacement",
                    fleet.existing, spec.capacity.max_instances
                ),
            ),
            None => {
                launch_for.push(InstanceId::new(id));
                in_progress += 1;
                room -= 1;
            }
        }
    }
    Replacements {
        launch_for,
        drain,
        waiting,
    }
}
