//! Which fleet an AWS resource belongs to, as tags. Every resource the
//! operator creates carries them, so a fleet's instances are listed by one
//! tag filter and nothing of another fleet (or not ours) is ever touched.

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

/// Tag key holding `<namespace>/<name>` of the owning fleet.
pub const FLEET_TAG: &str = "browserfleet.io/fleet";
/// Tag key holding the owning fleet's Kubernetes uid.
pub const FLEET_UID_TAG: &str = "browserfleet.io/fleet-uid";
/// Tag key marking a resource as managed by browserfleet.
pub const MANAGED_BY_TAG: &str = "browserfleet.io/managed-by";
/// Value of [`MANAGED_BY_TAG`].
pub const MANAGED_BY_VALUE: &str = "browserfleet";
/// Tag key: the fleet's launch sequence number an instance was launched
/// for (`LaunchRequest::sequence`).
pub const LAUNCH_SEQUENCE_TAG: &str = "browserfleet.io/launch-sequence";
/// Tag key: the [`crate::cloud::LaunchHash`] of what an instance was
/// launched with; one that differs from the fleet's current hash has
/// drifted.
pub const LAUNCH_HASH_TAG: &str = "browserfleet.io/launch-hash";
/// Tag key: the capacity an instance was launched on, `spot` or
/// `on-demand`.
pub const CAPACITY_TYPE_TAG: &str = "browserfleet.io/capacity-type";
/// Tag key: the operator cluster's name (`--cluster-name`) on the instances
/// it launches, so that its orphan sweep takes only its own.
pub const CLUSTER_TAG: &str = "browserfleet.io/cluster";
/// Prefix reserved for our own tags; user tags may not use it.
pub const RESERVED_TAG_PREFIX: &str = "browserfleet.io/";

/// A fleet that is not identified well enough to own AWS resources.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FleetIdError {
    /// The namespace, name or uid is empty.
    #[error("fleet {what} is empty; a fleet must have a namespace, a name and a uid")]
    Empty {
        /// Which part is empty.
        what: &'static str,
    },
}

/// The fleet that owns AWS resources: namespace, name and Kubernetes uid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FleetId {
    namespace: String,
    name: String,
    uid: String,
}

impl FleetId {
    /// Builds a fleet identity; every part must be non-empty.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
    ) -> Result<Self, FleetIdError> {
        let id = FleetId {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        };
        for (what, value) in [
            ("namespace", &id.namespace),
            ("name", &id.name),
            ("uid", &id.uid),
        ] {
            if value.is_empty() {
                return Err(FleetIdError::Empty { what });
            }
        }
        Ok(id)
    }

    /// The fleet's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The fleet's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fleet's Kubernetes uid.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The tags that mark a resource as this fleet's, followed by the user's
    /// (which never override ours).
    pub fn tags(&self, user_tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut tags: BTreeMap<String, String> = user_tags
            .iter()
            .filter(|(key, _)| !key.starts_with(RESERVED_TAG_PREFIX))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        tags.insert(FLEET_TAG.to_owned(), self.to_string());
        tags.insert(FLEET_UID_TAG.to_owned(), self.uid.clone());
        tags.insert(MANAGED_BY_TAG.to_owned(), MANAGED_BY_VALUE.to_owned());
        tags
    }
}

impl fmt::Display for FleetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_tags_win_over_user_tags() {
        let fleet = FleetId::new("team-a", "web", "1234").unwrap();
        let user = BTreeMap::from([
            ("cost-center".to_owned(), "42".to_owned()),
            (FLEET_TAG.to_owned(), "forged".to_owned()),
        ]);
        let tags = fleet.tags(&user);
        assert_eq!(tags[FLEET_TAG], "team-a/web");
        assert_eq!(tags[FLEET_UID_TAG], "1234");
        assert_eq!(tags[MANAGED_BY_TAG], "browserfleet");
        assert_eq!(tags["cost-center"], "42");
        assert_eq!(tags.len(), 4);
    }

    #[test]
    fn empty_parts_are_refused() {
        assert_eq!(
            FleetId::new("ns", "", "uid"),
            Err(FleetIdError::Empty { what: "name" })
        );
    }
}
