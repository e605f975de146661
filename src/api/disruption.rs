//! `spec.disruption` of a `BrowserFleet`: when running instances are
//! replaced (a changed launch spec, or age) and how many at once; and the
//! status that says which are and why one waits. The decisions themselves
//! are `operator::fleet::plan::disruption`'s.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The schema patterns of `spec.disruption`. [`DisruptionBudget::parse`] and
/// [`parse_lifetime`] accept exactly what they match (a property test says
/// so), so the operator reads every value the CRD lets through.
pub mod patterns {
    /// A count (`0` to `9999`) or a percentage (`0%` to `100%`).
    pub const BUDGET: &str = "^((0|[1-9][0-9]?|100)%|0|[1-9][0-9]{0,3})$";
    /// A positive whole number of seconds, minutes, hours or days: `90m`,
    /// `72h`, `7d`.
    pub const LIFETIME: &str = "^[1-9][0-9]{0,5}[smhd]$";
}

/// When running instances are replaced, and how many at once. A
/// replacement is launched first; the old instance is drained once the new
/// one is ready and terminated when its last session has ended (or at
/// `scaling.drainTimeoutSeconds`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionSpec {
    /// At most this many instances are being replaced at once: a count
    /// (`"1"`) or a percentage of the fleet's instances (`"20%"`, rounded
    /// up). A string: quote a count in YAML. During a replacement the fleet
    /// may have this many instances above `maxInstances`. `"0"` replaces
    /// nothing (drifted and expired instances are still counted in status).
    #[serde(default = "default_budget")]
    #[schemars(pattern(patterns::BUDGET))]
    pub budget: String,
    /// Instances older than this are replaced: a whole number of seconds,
    /// minutes, hours or days (`"72h"`, `"7d"`). Unset: never. Long-running
    /// Windows hosts and browsers degrade over days; a value shorter than an
    /// instance's boot time replaces instances as fast as they come up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::LIFETIME))]
    pub expire_after: Option<String>,
}

impl Default for DisruptionSpec {
    fn default() -> Self {
        DisruptionSpec {
            budget: default_budget(),
            expire_after: None,
        }
    }
}

/// One instance at a time for fleets of up to ten, a tenth of larger
/// ones: Karpenter's default, small enough that a bad image reaches few
/// instances before someone notices.
fn default_budget() -> String {
    "10%".to_owned()
}

impl DisruptionSpec {
    /// The budget; `None` for a value the schema would refuse.
    pub fn budget(&self) -> Option<DisruptionBudget> {
        DisruptionBudget::parse(&self.budget)
    }

    /// `expireAfter`; `None` when unset (or for a value the schema would
    /// refuse, which `validate()` reports).
    pub fn expire_after(&self) -> Option<Duration> {
        self.expire_after.as_deref().and_then(parse_lifetime)
    }
}

/// How many instances may be replaced at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisruptionBudget {
    /// This many.
    Count(u32),
    /// This percentage of the fleet's instances, rounded up.
    Percent(u32),
}

impl DisruptionBudget {
    /// Reads [`patterns::BUDGET`].
    pub fn parse(text: &str) -> Option<Self> {
        let (digits, percent) = match text.strip_suffix('%') {
            Some(digits) => (digits, true),
            None => (text, false),
        };
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        let value: u32 = digits.parse().ok().filter(|_| canonical)?;
        match percent {
            true if value <= 100 => Some(DisruptionBudget::Percent(value)),
            false if value <= 9999 => Some(DisruptionBudget::Count(value)),
            _ => None,
        }
    }

    /// Instances that may be replaced at once in a fleet of `instances`.
    /// A percentage rounds up, so that any budget above zero lets a small
    /// fleet replace one instance.
    pub fn allowed(self, instances: u32) -> u32 {
        match self {
            DisruptionBudget::Count(count) => count,
            DisruptionBudget::Percent(percent) => {
                let scaled = u64::from(instances) * u64::from(percent);
                u32::try_from(scaled.div_ceil(100)).unwrap_or(u32::MAX)
            }
        }
    }
}

/// Reads [`patterns::LIFETIME`]: `90m` is 90 minutes.
pub fn parse_lifetime(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    let canonical = !digits.is_empty()
        && digits.len() <= 6
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    let value: u64 = digits.parse().ok().filter(|_| canonical)?;
    let seconds = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(value * seconds))
}

/// Why an instance is to be replaced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DisruptionReason {
    /// It was launched with a spec the fleet no longer has: another image,
    /// security groups, profile, key, volume, tags or user data (its
    /// `browserfleet.io/launch-hash` tag differs from `status.launchHash`),
    /// or an instance type or subnet the fleet no longer lists.
    Drifted,
    /// It is older than `spec.disruption.expireAfter`.
    Expired,
}

impl DisruptionReason {
    /// For Events and logs.
    pub fn describe(self) -> &'static str {
        match self {
            DisruptionReason::Drifted => "drifted",
            DisruptionReason::Expired => "expired",
        }
    }
}

/// Why a drifted or expired instance is not being replaced right now.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplacementWaiting {
    /// CamelCase: `BudgetExhausted`, `ReplacementNotReady`,
    /// `CapacityInUse`, `InstanceLimit`, `LaunchesHeld`, `BudgetZero`.
    pub reason: String,
    /// For humans: which instance, and what it waits for.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn budgets_read_as_counts_or_percentages() {
        assert_eq!(
            DisruptionBudget::parse("1"),
            Some(DisruptionBudget::Count(1))
        );
        assert_eq!(
            DisruptionBudget::parse("0"),
            Some(DisruptionBudget::Count(0))
        );
        assert_eq!(
            DisruptionBudget::parse("20%"),
            Some(DisruptionBudget::Percent(20))
        );
        for bad in ["", "%", "01", "101%", "-1", "1.5", "10000", " 1"] {
            assert_eq!(DisruptionBudget::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_percentage_rounds_up_so_a_small_fleet_replaces_one() {
        assert_eq!(DisruptionBudget::Percent(10).allowed(3), 1);
        assert_eq!(DisruptionBudget::Percent(10).allowed(20), 2);
        assert_eq!(DisruptionBudget::Percent(10).allowed(21), 3);
        assert_eq!(DisruptionBudget::Percent(0).allowed(50), 0);
        assert_eq!(DisruptionBudget::Percent(100).allowed(0), 0);
        assert_eq!(DisruptionBudget::Count(2).allowed(0), 2);
    }

    #[test]
    fn lifetimes_read_in_their_unit() {
        assert_eq!(parse_lifetime("90m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_lifetime("72h"), Some(Duration::from_secs(259_200)));
        assert_eq!(parse_lifetime("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_lifetime("30s"), Some(Duration::from_secs(30)));
        for bad in ["", "0s", "h", "1h30m", "1w", "01h", "1H", "1234567s"] {
            assert_eq!(parse_lifetime(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_default_budget_is_ten_percent() {
        assert_eq!(
            DisruptionSpec::default().budget(),
            Some(DisruptionBudget::Percent(10))
        );
    }

    proptest! {
        /// What the schema lets through is what the operator reads.
        #[test]
        fn the_parsers_accept_exactly_what_the_patterns_match(text in "[0-9]{0,6}[%smhdw]?") {
            let budget = regex::Regex::new(patterns::BUDGET).unwrap();
            let lifetime = regex::Regex::new(patterns::LIFETIME).unwrap();
            prop_assert_eq!(budget.is_match(&text), DisruptionBudget::parse(&text).is_some(), "budget {:?}", text);
            prop_assert_eq!(lifetime.is_match(&text), parse_lifetime(&text).is_some(), "lifetime {:?}", text);
        }
    }
}
