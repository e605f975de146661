//! Launches that never double: the pure part of the fleet reconciler's
//! launch step. A launch is recorded in the fleet's status
//! ([`LaunchIntent`]) before EC2 is called; EC2 tags each instance with the
//! launch's sequence and derives its client tokens from it. Whatever happens
//! between the status write and EC2's answer (a crash, a lost response, a
//! new leader), the next reconcile compares the intent with the instances
//! tagged with its sequence and launches only what is missing (with a new
//! sequence: EC2 refuses a client token reused with another count). Within
//! one launch, the SDK's retries of a call reuse its token, so a lost answer
//! never doubles it.

use crate::api::fleet::{InstanceStatus, LaunchIntent};
use crate::cloud::FleetInstance;

/// What to do about the fleet's recorded launch, given its instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchProgress {
    /// No launch is recorded.
    Idle,
    /// The recorded launch still misses `missing` instances: launch them
    /// with `sequence`.
    Unfinished {
        /// The launch's sequence number.
        sequence: u64,
        /// Instances still to launch.
        missing: u32,
    },
    /// Every instance of the recorded launch exists: clear the intent.
    Complete,
}

/// Compares the recorded launch with the fleet's instances: those listed
/// with its sequence, and those status records by id (launched since the
/// launch was decided) that EC2's listing does not show yet — `RunInstances`
/// answered with them, the listing lags (issue #28 item 5: resuming from
/// the listing alone launched them again). An instance being terminated
/// still counts (it was launched; replacing it is a new decision); one
/// already gone from the listing and from status does not.
pub fn progress(
    intent: Option<&LaunchIntent>,
    instances: &[FleetInstance],
    recorded: &[InstanceStatus],
) -> LaunchProgress {
    let Some(intent) = intent else {
        return LaunchProgress::Idle;
    };
    let Ok(sequence) = u64::try_from(intent.sequence) else {
        // Not a sequence this operator wrote; nothing can be launched for it.
        return LaunchProgress::Complete;
    };
    let listed = instances
        .iter()
        .filter(|i| i.launch_sequence() == Some(sequence))
        .count();
    let recorded_unlisted = recorded
        .iter()
        .filter(|s| !instances.iter().any(|i| i.id.as_str() == s.instance_id))
        .filter(|s| {
            s.launch_time
                .as_ref()
                .is_some_and(|t| t.0 >= intent.decided_at.0)
        })
        .count();
    let launched = listed + recorded_unlisted;
    let wanted = usize::try_from(intent.count).unwrap_or(0);
    match wanted.saturating_sub(launched) {
        0 => LaunchProgress::Complete,
        missing => LaunchProgress::Unfinished {
            sequence,
            missing: u32::try_from(missing).unwrap_or(u32::MAX),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::cloud::fleet_tags::LAUNCH_SEQUENCE_TAG;
    use crate::cloud::{Ec2State, InstanceId};

    fn instance(id: &str, sequence: Option<u64>, state: Ec2State) -> FleetInstance {
        FleetInstance {
            id: InstanceId::new(id),
            state,
            instance_type: None,
            image_id: None,
            subnet_id: None,
            availability_zone: None,
            private_ip: None,
            launch_time: None,
            tags: sequence
                .map(|s| BTreeMap::from([(LAUNCH_SEQUENCE_TAG.to_owned(), s.to_string())]))
                .unwrap_or_default(),
        }
    }

    fn intent(sequence: i64, count: i32) -> LaunchIntent {
        LaunchIntent {
            sequence,
            count,
            decided_at: Time(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    fn recorded(id: &str, launched_at: i64) -> InstanceStatus {
        let mut status: InstanceStatus = serde_json::from_value(serde_json::json!({
            "instanceId": id,
            "state": "Pending",
        }))
        .expect("status");
        status.launch_time = Some(Time(
            jiff::Timestamp::from_second(launched_at).expect("time"),
        ));
        status
    }

    #[test]
    fn instances_status_records_count_while_the_listing_omits_them() {
        let decided = LaunchIntent {
            decided_at: Time(jiff::Timestamp::from_second(100).expect("time")),
            ..intent(3, 3)
        };
        let listed = [instance("i-1", Some(3), Ec2State::Pending)];
        // i-2 launched by this launch and not listed yet; i-0 is older.
        let statuses = [
            recorded("i-1", 101),
            recorded("i-2", 101),
            recorded("i-0", 50),
        ];
        assert_eq!(
            progress(Some(&decided), &listed, &statuses),
            LaunchProgress::Unfinished {
                sequence: 3,
                missing: 1
            }
        );
        let statuses = [recorded("i-2", 101), recorded("i-3", 102)];
        assert_eq!(
            progress(Some(&decided), &listed, &statuses),
            LaunchProgress::Complete
        );
    }

    #[test]
    fn no_intent_is_idle() {
        assert_eq!(progress(None, &[], &[]), LaunchProgress::Idle);
    }

    #[test]
    fn a_launch_cut_short_launches_only_what_is_missing_with_its_sequence() {
        let instances = [
            instance("i-1", Some(3), Ec2State::Pending),
            instance("i-2", Some(2), Ec2State::Running),
            instance("i-3", None, Ec2State::Running),
        ];
        assert_eq!(
            progress(Some(&intent(3, 4)), &instances, &[]),
            LaunchProgress::Unfinished {
                sequence: 3,
                missing: 3
            }
        );
    }

    #[test]
    fn a_launch_whose_instances_all_exist_is_complete_even_if_some_already_went() {
        let instances = [
            instance("i-1", Some(5), Ec2State::Running),
            instance("i-2", Some(5), Ec2State::Terminated),
        ];
        assert_eq!(
            progress(Some(&intent(5, 2)), &instances, &[]),
            LaunchProgress::Complete
        );
    }
}
