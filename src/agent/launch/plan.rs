//! Whether and how a create is launched here: a pure decision over the
//! request, the fleet's rules and what the extensions directory holds, so
//! every refusal and every limit is tested without starting anything.

use std::time::Duration;

use crate::agent::args::{ArgPolicy, ArgViolation, sanitize};
use crate::agent::profiles::validate_name;
use crate::agent::table::token_digest;
use crate::protocol::{CreateRequest, FailureReason, ProfileName, SessionId};

/// The fleet's rules a launch obeys.
#[derive(Clone, Copy, Debug)]
pub struct LaunchRules<'a> {
    /// Which browser switches a request may pass.
    pub arg_policy: &'a ArgPolicy,
    /// Whether requests may name a profile that outlives them.
    pub allow_persistent_profiles: bool,
    /// TTL of a request that names none.
    pub default_ttl: Duration,
    /// Longest TTL; longer requests are cut to it.
    pub max_ttl: Duration,
}

/// The profile a session's browser gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProfileChoice {
    /// A named profile, reused across sessions.
    Named(ProfileName),
    /// A fresh profile in this directory, removed at the session's end.
    Temporary(String),
}

/// How a create is launched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    /// The request's browser arguments, sanitized.
    pub args: Vec<String>,
    /// Its profile.
    pub profile: ProfileChoice,
    /// Its TTL, cut to the fleet's maximum.
    pub ttl: Duration,
    /// Whether the requested TTL was longer than the maximum, so that its
    /// end is reported as `hardTtlExceeded`.
    pub ttl_was_cut: bool,
}

/// Why a create can never be launched here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It passes browser switches the fleet forbids.
    ForbiddenArguments(Vec<ArgViolation>),
    /// It names extensions the extensions directory does not hold.
    MissingExtensions(Vec<String>),
    /// It names a profile, and the fleet keeps none.
    PersistentProfilesOff,
}

impl Refusal {
    /// The reason `session.failed` carries.
    pub fn reason(&self) -> FailureReason {
        match self {
            Refusal::ForbiddenArguments(_) => FailureReason::ForbiddenArgument,
            Refusal::MissingExtensions(_) | Refusal::PersistentProfilesOff => {
                FailureReason::InvalidRequest
            }
        }
    }
}

/// Plans the launch of session `id` for `request`, or refuses it: first
/// its arguments, then its extensions (`missing_extensions`: those of the
/// request the extensions directory lacks), then its profile.
pub fn plan_launch(
    id: &SessionId,
    request: &CreateRequest,
    rules: &LaunchRules<'_>,
    missing_extensions: Vec<String>,
) -> Result<LaunchPlan, Refusal> {
    let args = sanitize(&request.args, rules.arg_policy).map_err(Refusal::ForbiddenArguments)?;
    if !missing_extensions.is_empty() {
        return Err(Refusal::MissingExtensions(missing_extensions));
    }
    let profile = match &request.profile {
        Some(_) if !rules.allow_persistent_profiles => return Err(Refusal::PersistentProfilesOff),
        Some(name) => ProfileChoice::Named(name.clone()),
        None => ProfileChoice::Temporary(profile_dir_name(id)),
    };
    let requested = request.ttl.unwrap_or(rules.default_ttl);
    Ok(LaunchPlan {
        args,
        profile,
        ttl: requested.min(rules.max_ttl),
        ttl_was_cut: requested > rules.max_ttl,
    })
}

/// The message of a refusal; `installed` (the extensions the directory
/// holds) is read only for a refusal of missing ones.
pub fn refusal_message(refusal: &Refusal, installed: &[String]) -> String {
    match refusal {
        Refusal::ForbiddenArguments(violations) => violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        Refusal::MissingExtensions(missing) => {
            super::command::missing_extensions_message(missing, installed)
        }
        Refusal::PersistentProfilesOff => {
            "this fleet does not keep named profiles (profiles.allowPersistent is off)".into()
        }
    }
}

/// The directory name of a session's temporary profile: the session id when
/// it is a valid profile name, otherwise a digest of it (ids may be longer
/// and use characters a directory name should not).
pub fn profile_dir_name(id: &SessionId) -> String {
    if validate_name(id.as_str()).is_ok() {
        id.as_str().to_owned()
    } else {
        format!("s-{}", &token_digest(id.as_str())[..32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(policy: &ArgPolicy, persistent: bool) -> LaunchRules<'_> {
        LaunchRules {
            arg_policy: policy,
            allow_persistent_profiles: persistent,
            default_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(600),
        }
    }

    fn id(text: &str) -> SessionId {
        text.parse().unwrap()
    }

    #[test]
    fn profile_directories_are_safe_names_for_any_session_id() {
        let plain: SessionId = "s-1".parse().unwrap();
        assert_eq!(profile_dir_name(&plain), "s-1");
        let odd: SessionId = "team:job:42".parse().unwrap();
        let name = profile_dir_name(&odd);
        assert!(validate_name(&name).is_ok(), "{name}");
        assert_ne!(name, profile_dir_name(&"team:job:43".parse().unwrap()));
    }

    #[test]
    fn a_plain_create_gets_a_temporary_profile_and_the_default_ttl() {
        let policy = ArgPolicy::default();
        let plan = plan_launch(
            &id("s-1"),
            &CreateRequest::default(),
            &rules(&policy, false),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(plan.profile, ProfileChoice::Temporary("s-1".into()));
        assert_eq!(plan.ttl, Duration::from_secs(300));
        assert!(!plan.ttl_was_cut);
        assert!(plan.args.is_empty());
    }

    #[test]
    fn a_ttl_beyond_the_maximum_is_cut_and_marked() {
        let policy = ArgPolicy::default();
        for (asked, ttl, cut) in [(600, 600, false), (601, 600, true), (30, 30, false)] {
            let request = CreateRequest {
                ttl: Some(Duration::from_secs(asked)),
                ..CreateRequest::default()
            };
            let plan =
                plan_launch(&id("s-1"), &request, &rules(&policy, false), Vec::new()).unwrap();
            assert_eq!(
                (plan.ttl, plan.ttl_was_cut),
                (Duration::from_secs(ttl), cut)
            );
        }
    }

    #[test]
    fn arguments_are_judged_before_extensions_and_extensions_before_profiles() {
        let policy = ArgPolicy::default();
        let request = CreateRequest {
            args: vec!["--remote-debugging-port=1".into()],
            profile: Some(ProfileName::new("team").unwrap()),
            ..CreateRequest::default()
        };
        let missing = vec!["gone".to_owned()];
        let refusal = plan_launch(
            &id("s-1"),
            &request,
            &rules(&policy, false),
            missing.clone(),
        )
        .unwrap_err();
        assert!(
            matches!(refusal, Refusal::ForbiddenArguments(_)),
            "{refusal:?}"
        );
        assert_eq!(refusal.reason(), FailureReason::ForbiddenArgument);
        let request = CreateRequest {
            args: Vec::new(),
            ..request
        };
        let refusal = plan_launch(
            &id("s-1"),
            &request,
            &rules(&policy, false),
            missing.clone(),
        )
        .unwrap_err();
        assert_eq!(refusal, Refusal::MissingExtensions(missing));
        assert_eq!(refusal.reason(), FailureReason::InvalidRequest);
        let refusal =
            plan_launch(&id("s-1"), &request, &rules(&policy, false), Vec::new()).unwrap_err();
        assert_eq!(refusal, Refusal::PersistentProfilesOff);
        assert!(refusal_message(&refusal, &[]).contains("profiles.allowPersistent"));
    }

    #[test]
    fn a_named_profile_is_used_where_the_fleet_keeps_them() {
        let policy = ArgPolicy::default();
        let request = CreateRequest {
            profile: Some(ProfileName::new("team").unwrap()),
            ..CreateRequest::default()
        };
        let plan = plan_launch(&id("s-1"), &request, &rules(&policy, true), Vec::new()).unwrap();
        assert_eq!(
            plan.profile,
            ProfileChoice::Named(ProfileName::new("team").unwrap())
        );
    }
}
