//! Status conditions, set the same way by every reconciler: a condition's
//! `lastTransitionTime` changes only when its status does, so a steady fleet
//! writes the same conditions on every reconcile.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// What a condition should say now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// `Ready`, `Scaling`, `Degraded`.
    pub type_: &'static str,
    /// True or false.
    pub status: bool,
    /// CamelCase reason.
    pub reason: String,
    /// For humans.
    pub message: String,
}

impl Wanted {
    /// A condition of `type_` with `status`, `reason` and `message`.
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Wanted {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The conditions after setting `wanted` over `current`: conditions of other
/// types are kept, the transition time of one whose status is unchanged too.
pub fn merge(
    current: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut merged: Vec<Condition> = current
        .iter()
        .filter(|c| !wanted.iter().any(|w| w.type_ == c.type_))
        .cloned()
        .collect();
    for w in wanted {
        let status = if w.status { "True" } else { "False" };
        let since = current
            .iter()
            .find(|c| c.type_ == w.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        merged.push(Condition {
            type_: w.type_.to_owned(),
            status: status.to_owned(),
            reason: w.reason.clone(),
            message: w.message.clone(),
            observed_generation: generation,
            last_transition_time: since,
        });
    }
    merged.sort_by(|a, b| a.type_.cmp(&b.type_));
    merged
}

/// Whether condition `type_` is `True` in `conditions`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Time {
        Time(jiff::Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn an_unchanged_status_keeps_its_transition_time() {
        let first = merge(
            &[],
            &[Wanted::new("Ready", true, "Ready", "ok")],
            Some(1),
            &at(10),
        );
        let second = merge(
            &first,
            &[Wanted::new("Ready", true, "Ready", "still ok")],
            Some(2),
            &at(20),
        );
        assert_eq!(second[0].last_transition_time, at(10));
        assert_eq!(second[0].message, "still ok");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn a_changed_status_moves_its_transition_time_and_others_stay() {
        let first = merge(
            &[],
            &[
                Wanted::new("Ready", true, "Ready", ""),
                Wanted::new("Degraded", false, "Healthy", ""),
            ],
            None,
            &at(10),
        );
        let second = merge(
            &first,
            &[Wanted::new("Ready", false, "InvalidSpec", "bad")],
            None,
            &at(20),
        );
        let ready = second.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_transition_time, at(20));
        assert_eq!(ready.status, "False");
        let degraded = second.iter().find(|c| c.type_ == "Degraded").unwrap();
        assert_eq!(degraded.last_transition_time, at(10));
        assert!(!is_true(&second, "Ready"));
    }
}
