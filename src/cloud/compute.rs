//! EC2: launching, listing, stopping, starting and terminating a fleet's
//! instances, behind the [`Compute`] trait.
//!
//! Moto gaps met while testing [`Ec2Compute`] against moto, and why the design
//! holds on real AWS anyway:
//! * moto ignores `ClientToken` idempotency: a repeated `RunInstances` with the
//!   same token launches again. On AWS the same token returns the original
//!   reservation, which is what makes a retried launch never double; the token
//!   is derived from the fleet uid, the launch sequence, the placement group and
//!   the fallback attempt, so it is stable across retries of the same launch and
//!   distinct between different requests (AWS refuses a reused token with
//!   different parameters).
//! * moto's `DescribeInstances` pages by *reservation* (`MaxResults` counts
//!   reservations) where AWS counts instances. The listing follows `NextToken`
//!   until it is absent, so it is correct for both.
//! * moto launches `MinCount` instances and ignores `MaxCount`. Launches set
//!   both to the group size (all or nothing per placement), which behaves the
//!   same on both.
//! * moto does not echo `IamInstanceProfile` in `DescribeInstances` and
//!   associates the profile with the first instance of a reservation only;
//!   AWS applies it to every instance of the request.
//! * moto never answers `InsufficientInstanceCapacity` or `Unsupported`; the
//!   fallback order is tested by injecting those errors at the HTTP layer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    Instance, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceNetworkInterfaceSpecification, InstanceStateName, InstanceType, MarketType,
    ResourceType, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification,
    VolumeType as Ec2VolumeType,
};
use thiserror::Error;

use super::error::{AwsFault, FaultKind, Service};
use super::fleet_tags::{
    CAPACITY_TYPE_TAG, CLUSTER_TAG, FLEET_TAG, FLEET_UID_TAG, FleetId, LAUNCH_HASH_TAG,
    LAUNCH_SEQUENCE_TAG, MANAGED_BY_TAG, MANAGED_BY_VALUE,
};
use super::recorder::CallRecorder;
use super::settings::{Aws, observe};
use crate::api::fleet::{CapacityType, ImageSource, InstanceSpec, RootVolumeSpec, VolumeType};

/// Longest client token EC2 accepts.
pub const MAX_CLIENT_TOKEN_LEN: usize = 64;
/// Largest page `DescribeInstances` returns.
pub const MAX_PAGE_SIZE: i32 = 1000;
/// Ids per `TerminateInstances` / `StopInstances` / `StartInstances` call.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// Instance ids are protocol values too (agents report theirs): one type,
/// defined there.
pub use crate::protocol::InstanceId;

/// An AMI id, `ami-…`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageId(String);

impl ImageId {
    /// Accepts an AMI id; anything not starting with `ami-` is refused.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        let valid = id.len() > 4 && id.starts_with("ami-");
        valid.then_some(ImageId(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The idempotency token of one `RunInstances` call (at most 64 ASCII chars).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientToken(String);

impl ClientToken {
    /// The token of one placement attempt of one launch: stable when the same
    /// launch is retried, distinct for every other request.
    pub fn for_attempt(fleet: &FleetId, sequence: u64, group: usize, attempt: usize) -> Self {
        let uid: String = fleet
            .uid()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect();
        // 32 + 1 + 20 + 1 + 4 + 1 + 5 stays within 64 for every realistic
        // group and attempt count; the bound is enforced below regardless.
        let mut token = format!("{uid}-{sequence}-{group}-{attempt}");
        token.truncate(MAX_CLIENT_TOKEN_LEN);
        ClientToken(token)
    }

    /// The token as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An instance's state as EC2 reports it (`instance-state-name`); the
/// operator's own view of an instance's life is
/// [`crate::api::fleet::InstanceState`], which `operator::fleet::plan`
/// derives from this and from what the agent says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ec2State {
    Pending,
    /// Running as far as EC2 knows; says nothing of the agent.
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
    /// A state this code does not know (newer API).
    Other(String),
}

impl From<&InstanceStateName> for Ec2State {
    fn from(name: &InstanceStateName) -> Self {
        match name {
            InstanceStateName::Pending => Ec2State::Pending,
            InstanceStateName::Running => Ec2State::Running,
            InstanceStateName::Stopping => Ec2State::Stopping,
            InstanceStateName::Stopped => Ec2State::Stopped,
            InstanceStateName::ShuttingDown => Ec2State::ShuttingDown,
            InstanceStateName::Terminated => Ec2State::Terminated,
            other => Ec2State::Other(other.as_str().to_owned()),
        }
    }
}

/// One instance of a fleet, as EC2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetInstance {
    /// Instance id.
    pub id: InstanceId,
    /// Lifecycle state.
    pub state: Ec2State,
    /// Instance type, e.g. `m6i.xlarge`.
    pub instance_type: Option<String>,
    /// AMI it was launched from.
    pub image_id: Option<String>,
    /// Subnet it runs in.
    pub subnet_id: Option<String>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// Private IPv4 address.
    pub private_ip: Option<IpAddr>,
    /// When it was launched.
    pub launch_time: Option<SystemTime>,
    pub tags: BTreeMap<String, String>,
}

impl FleetInstance {
    /// The launch it came from (its `browserfleet.io/launch-sequence` tag):
    /// how an operator that restarted mid-launch sees what an unfinished
    /// launch already started, instead of launching it again.
    pub fn launch_sequence(&self) -> Option<u64> {
        self.tags.get(LAUNCH_SEQUENCE_TAG)?.parse().ok()
    }

    /// The hash of what it was launched with (its
    /// `browserfleet.io/launch-hash` tag); `None` for an instance an
    /// operator before the tag launched.
    pub fn launch_hash(&self) -> Option<LaunchHash> {
        self.tags
            .get(LAUNCH_HASH_TAG)
            .map(|h| LaunchHash(h.clone()))
    }

    fn from_sdk(instance: &Instance) -> Option<Self> {
        let id = instance.instance_id()?;
        Some(FleetInstance {
            id: InstanceId::new(id),
            state: instance
                .state()
                .and_then(|s| s.name())
                .map(Ec2State::from)
                .unwrap_or(Ec2State::Other("unknown".to_owned())),
            instance_type: instance.instance_type().map(|t| t.as_str().to_owned()),
            image_id: instance.image_id().map(str::to_owned),
            subnet_id: instance.subnet_id().map(str::to_owned),
            availability_zone: instance
                .placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_owned),
            private_ip: instance.private_ip_address().and_then(|ip| ip.parse().ok()),
            launch_time: instance
                .launch_time()
                .and_then(|t| SystemTime::try_from(*t).ok()),
            tags: instance
                .tags()
                .iter()
                .filter_map(|t| {
                    Some((
                        t.key()?.to_owned(),
                        t.value().unwrap_or_default().to_owned(),
                    ))
                })
                .collect(),
        })
    }
}

/// The root EBS volume of a launched instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootVolume {
    /// Size in GiB.
    pub size_gib: i32,
    /// Volume type.
    pub volume_type: VolumeType,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// KMS key for encryption; the account default when `None`.
    pub kms_key_id: Option<String>,
}

impl From<&RootVolumeSpec> for RootVolume {
    fn from(spec: &RootVolumeSpec) -> Self {
        RootVolume {
            size_gib: spec.size_gib,
            volume_type: spec.volume_type,
            encrypted: spec.encrypted,
            kms_key_id: spec.kms_key_id.clone(),
        }
    }
}

/// Everything needed to launch instances of a fleet, resolved from its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceBlueprint {
    /// AMI to launch.
    pub image_id: ImageId,
    /// Instance types in order of preference.
    pub instance_types: Vec<String>,
    /// Subnets to spread over.
    pub subnet_ids: Vec<String>,
    /// Security groups.
    pub security_group_ids: Vec<String>,
    /// IAM instance profile name.
    pub instance_profile: String,
    /// EC2 key pair name.
    pub key_name: Option<String>,
    /// Root volume.
    pub root_volume: RootVolume,
    /// User data, plain text (base64-encoded on the wire).
    pub user_data: Option<String>,
    /// The user data as far as it drifts an instance, when not all of it
    /// does: the operator's rendering without the agent artifact, which
    /// reaches running instances in place (Run Command), not by a
    /// replacement. [`Self::user_data`] when `None`.
    pub drift_user_data: Option<String>,
    /// Give instances a public IPv4 address.
    pub associate_public_ip: bool,
    /// On-demand or spot capacity, or spot then on demand.
    pub capacity_type: CapacityType,
    /// The user's tags (the fleet's own tags are added on launch).
    pub tags: BTreeMap<String, String>,
    /// The launching operator's cluster name, tagged [`CLUSTER_TAG`].
    pub cluster: Option<String>,
}

impl InstanceBlueprint {
    /// The blueprint a fleet's `instance` spec describes, with the AMI already
    /// resolved and the user data the operator renders.
    pub fn from_spec(spec: &InstanceSpec, image_id: ImageId, user_data: Option<String>) -> Self {
        InstanceBlueprint {
            image_id,
            instance_types: spec.instance_types.clone(),
            subnet_ids: spec.subnet_ids.clone(),
            security_group_ids: spec.security_group_ids.clone(),
            instance_profile: spec.instance_profile.clone(),
            key_name: spec.key_name.clone(),
            root_volume: RootVolume::from(&spec.root_volume),
            user_data,
            drift_user_data: None,
            associate_public_ip: spec.associate_public_ip,
            capacity_type: spec.capacity_type,
            tags: spec.tags.clone(),
            cluster: None,
        }
    }
}

/// A digest of what an instance is launched with, tagged on it
/// ([`LAUNCH_HASH_TAG`]): two blueprints with the same hash launch the same
/// machine. 16 hex digits of SHA-256 (64 bits: no two specs of one fleet
/// collide by chance).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LaunchHash(String);

impl LaunchHash {
    /// A hash read from an instance's tag.
    pub fn from_tag(value: impl Into<String>) -> Self {
        LaunchHash(value.into())
    }

    /// The hash as tagged.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LaunchHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl InstanceBlueprint {
    /// The hash of everything an instance launched from this blueprint is
    /// that cannot change while it runs: image, security groups, instance
    /// profile, key, root volume, user data, public IP and the user's tags.
    ///
    /// Instance types and subnets are left out: they are lists to choose
    /// from, so an instance drifts only when its own type or subnet is no
    /// longer listed (adding a subnet replaces nothing). The operator's
    /// cluster name is left out too: it says who owns an instance, not how
    /// it runs.
    ///
    /// Each part is written as `name=value` on a line of its own, in a fixed
    /// order, with lists sorted where their order means nothing: the text,
    /// and so the hash, is the same in every operator process and version
    /// until a part is added (the leading `v1` changes then).
    pub fn launch_hash(&self) -> LaunchHash {
        use sha2::Digest;
        let mut groups = self.security_group_ids.clone();
        groups.sort();
        let volume = &self.root_volume;
        let mut text = format!(
            "v1\nimage={}\nsecurity-groups={}\ninstance-profile={}\nkey={}\n\
             volume={}:{}:{}:{}\npublic-ip={}\n",
            self.image_id,
            groups.join(","),
            self.instance_profile,
            self.key_name.as_deref().unwrap_or(""),
            volume.size_gib,
            volume_type_name(volume.volume_type),
            volume.encrypted,
            volume.kms_key_id.as_deref().unwrap_or(""),
            self.associate_public_ip,
        );
        for (key, value) in &self.tags {
            // Lengths first: no key or value can pass for a boundary.
            text.push_str(&format!(
                "tag={}:{key}={}:{value}\n",
                key.len(),
                value.len()
            ));
        }
        // Only when not on demand: every hash taken before the field existed
        // stays the same.
        match self.capacity_type {
            CapacityType::OnDemand => {}
            CapacityType::Spot => text.push_str("capacity=spot\n"),
            CapacityType::SpotThenOnDemand => text.push_str("capacity=spot-then-on-demand\n"),
        }
        text.push_str("user-data=");
        let user_data = self.drift_user_data.as_ref().or(self.user_data.as_ref());
        text.push_str(user_data.map_or("", String::as_str));
        let digest = sha2::Sha256::digest(text.as_bytes());
        let mut hex = hex::encode(digest);
        hex.truncate(16);
        LaunchHash(hex)
    }
}

/// How many instances to launch, and which launch this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchRequest {
    /// Instances wanted.
    pub count: u32,
    /// The fleet's launch sequence number: the same number on a retry makes
    /// the same client tokens, so EC2 never launches twice for one decision.
    pub sequence: u64,
    /// Index of the subnet that receives the first instance (round-robin).
    pub first_subnet: usize,
}

/// One placement EC2 had no capacity for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapacityMiss {
    /// Instance type tried.
    pub instance_type: String,
    /// Whether spot capacity was asked for.
    pub spot: bool,
    /// Subnet tried.
    pub subnet_id: String,
    /// AWS error code, e.g. `InsufficientInstanceCapacity`.
    pub code: Option<String>,
}

/// What a launch achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaunchOutcome {
    /// Instances launched.
    pub instances: Vec<FleetInstance>,
    /// Placements that had no capacity, in the order tried.
    pub misses: Vec<CapacityMiss>,
}

/// What went wrong with an EC2 call.
#[derive(Debug, Error)]
pub enum ComputeError {
    /// EC2 throttled the call beyond the retry budget: retry later.
    #[error("EC2 is throttling ({0}); retry later")]
    Throttled(AwsFault),
    /// An instance, image or parameter does not exist.
    #[error("not found: {0}")]
    NotFound(AwsFault),
    /// EC2 refused the request as invalid; fix the fleet spec.
    #[error("invalid EC2 request: {0}")]
    InvalidRequest(AwsFault),
    /// No capacity for one placement (the launch tries the next one itself).
    #[error("no EC2 capacity: {0}")]
    Capacity(AwsFault),
    /// Credentials lack a permission or are invalid.
    #[error("access denied: {0}; check the operator's IAM role")]
    AccessDenied(AwsFault),
    /// The call timed out; retry later.
    #[error("timed out: {0}")]
    Timeout(AwsFault),
    /// Server error or broken connection after retries; retry later.
    #[error("EC2 unavailable: {0}")]
    Unavailable(AwsFault),
    /// Every instance type in every subnet was out of capacity.
    #[error("no capacity for any instance type in any subnet ({} placements tried); add types or subnets, or retry later", misses.len())]
    NoCapacity {
        /// Every placement tried.
        misses: Vec<CapacityMiss>,
    },
    /// The blueprint cannot be launched as given.
    #[error("cannot launch: {reason}")]
    InvalidBlueprint {
        /// What is wrong.
        reason: String,
    },
    /// An SSM image parameter does not hold an AMI id.
    #[error("SSM parameter {parameter} holds {value:?}, not an AMI id")]
    ImageParameterInvalid {
        /// Parameter name.
        parameter: String,
        /// What it holds.
        value: String,
    },
    /// EC2 answered without something it always sends.
    #[error("EC2 {operation} answered without {what}")]
    MalformedResponse {
        /// Operation called.
        operation: &'static str,
        /// What was missing.
        what: &'static str,
    },
}

impl ComputeError {
    /// Whether the same call may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            ComputeError::Throttled(_)
            | ComputeError::Timeout(_)
            | ComputeError::Unavailable(_)
            | ComputeError::Capacity(_)
            | ComputeError::NoCapacity { .. } => true,
            ComputeError::NotFound(_)
            | ComputeError::InvalidRequest(_)
            | ComputeError::AccessDenied(_)
            | ComputeError::InvalidBlueprint { .. }
            | ComputeError::ImageParameterInvalid { .. }
            | ComputeError::MalformedResponse { .. } => false,
        }
    }

    /// The AWS error code, when the failure came from AWS.
    pub fn aws_code(&self) -> Option<&str> {
        self.fault().and_then(|f| f.code.as_deref())
    }

    /// The underlying AWS fault, when there is one.
    pub fn fault(&self) -> Option<&AwsFault> {
        match self {
            ComputeError::Throttled(f)
            | ComputeError::NotFound(f)
            | ComputeError::InvalidRequest(f)
            | ComputeError::Capacity(f)
            | ComputeError::AccessDenied(f)
            | ComputeError::Timeout(f)
            | ComputeError::Unavailable(f) => Some(f),
            _ => None,
        }
    }
}

impl From<AwsFault> for ComputeError {
    fn from(fault: AwsFault) -> Self {
        match fault.kind {
            FaultKind::Throttled => ComputeError::Throttled(fault),
            FaultKind::NotFound => ComputeError::NotFound(fault),
            FaultKind::InvalidRequest => ComputeError::InvalidRequest(fault),
            FaultKind::Capacity => ComputeError::Capacity(fault),
            FaultKind::AccessDenied => ComputeError::AccessDenied(fault),
            FaultKind::Timeout => ComputeError::Timeout(fault),
            FaultKind::Unavailable => ComputeError::Unavailable(fault),
        }
    }
}

/// The fleet's EC2 instances, in our domain's terms.
pub trait Compute: Send + Sync {
    /// The AMI id of an image source: the fixed id, or the value of the SSM
    /// parameter (e.g. an `/aws/service/ami-windows-latest/…` alias).
    fn resolve_image(
        &self,
        source: &ImageSource,
    ) -> impl Future<Output = Result<ImageId, ComputeError>> + Send;

    /// Launches `request.count` instances spread round-robin over the
    /// blueprint's subnets, falling back to the next instance type and then the
    /// next subnet when EC2 has no capacity.
    ///
    /// Each subnet's share is one group, placed whole or not at all. The
    /// outcome may hold fewer instances than asked when some group found no
    /// capacity anywhere (its misses say where it tried);
    /// [`ComputeError::NoCapacity`] means no group was placed. On any other
    /// error the instances that earlier groups launched are already tagged,
    /// so the next [`Compute::list_instances`] finds them, and a retry with the
    /// same `sequence` reuses the same client tokens, so AWS does not launch
    /// those groups again.
    fn launch(
        &self,
        fleet: &FleetId,
        blueprint: &InstanceBlueprint,
        request: LaunchRequest,
    ) -> impl Future<Output = Result<LaunchOutcome, ComputeError>> + Send;

    /// Every instance of the fleet that is not terminated, found by its uid tag
    /// in one paginated listing.
    fn list_instances(
        &self,
        fleet: &FleetId,
    ) -> impl Future<Output = Result<Vec<FleetInstance>, ComputeError>> + Send;

    /// Every instance of any fleet that is not terminated: those tagged
    /// [`MANAGED_BY_TAG`] = [`MANAGED_BY_VALUE`] that `filter` selects, in
    /// one paginated listing. For work across fleets (the orphan sweep, the
    /// node simulator), where the fleet of an instance is read from its tags.
    fn list_managed(
        &self,
        filter: &ManagedFilter,
    ) -> impl Future<Output = Result<Vec<FleetInstance>, ComputeError>> + Send;

    /// Terminates instances, in batches.
    fn terminate(
        &self,
        ids: &[InstanceId],
    ) -> impl Future<Output = Result<(), ComputeError>> + Send;

    /// Stops instances, in batches.
    fn stop(&self, ids: &[InstanceId]) -> impl Future<Output = Result<(), ComputeError>> + Send;

    /// Starts stopped instances, in batches.
    fn start(&self, ids: &[InstanceId]) -> impl Future<Output = Result<(), ComputeError>> + Send;
}

/// [`Compute`] on the AWS SDK.
#[derive(Clone, Debug)]
pub struct Ec2Compute {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    recorder: Arc<CallRecorder>,
    page_size: i32,
    batch_size: usize,
}

impl Ec2Compute {
    /// A client using the loaded AWS configuration.
    pub fn new(aws: &Aws) -> Self {
        Ec2Compute {
            ec2: aws_sdk_ec2::Client::new(aws.sdk_config()),
            ssm: aws_sdk_ssm::Client::new(aws.sdk_config()),
            recorder: Arc::clone(aws.recorder()),
            page_size: MAX_PAGE_SIZE,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }

    /// Sets the `DescribeInstances` page size (clamped to EC2's 5..=1000).
    pub fn with_page_size(mut self, page_size: i32) -> Self {
        self.page_size = page_size.clamp(5, MAX_PAGE_SIZE);
        self
    }

    /// Sets how many ids go in one terminate/stop/start call (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.clamp(1, DEFAULT_BATCH_SIZE);
        self
    }

    async fn root_device_name(&self, image: &ImageId) -> Result<String, ComputeError> {
        let out = observe(
            &self.recorder,
            Service::Ec2,
            "DescribeImages",
            self.ec2.describe_images().image_ids(image.as_str()).send(),
        )
        .await?;
        let found = out.images().first().and_then(|i| i.root_device_name());
        found
            .map(str::to_owned)
            .ok_or_else(|| ComputeError::InvalidBlueprint {
                reason: format!("image {image} does not exist or has no root device"),
            })
    }

    async fn run_instances(
        &self,
        fleet: &FleetId,
        blueprint: &InstanceBlueprint,
        placement: Placement<'_>,
    ) -> Result<Vec<FleetInstance>, ComputeError> {
        let mut tags = fleet.tags(&blueprint.tags);
        tags.insert(
            LAUNCH_SEQUENCE_TAG.to_owned(),
            placement.sequence.to_string(),
        );
        tags.insert(
            LAUNCH_HASH_TAG.to_owned(),
            blueprint.launch_hash().to_string(),
        );
        tags.insert(
            CAPACITY_TYPE_TAG.to_owned(),
            if placement.spot { "spot" } else { "on-demand" }.to_owned(),
        );
        if let Some(cluster) = &blueprint.cluster {
            tags.insert(CLUSTER_TAG.to_owned(), cluster.clone());
        }
        let sdk_tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let tag_spec = |resource| {
            TagSpecification::builder()
                .resource_type(resource)
                .set_tags(Some(sdk_tags.clone()))
                .build()
        };
        let volume = &blueprint.root_volume;
        let ebs = EbsBlockDevice::builder()
            .volume_size(volume.size_gib)
            .volume_type(Ec2VolumeType::from(volume_type_name(volume.volume_type)))
            .encrypted(volume.encrypted)
            .set_kms_key_id(volume.kms_key_id.clone())
            .delete_on_termination(true)
            .build();
        let mut call = self
            .ec2
            .run_instances()
            .image_id(blueprint.image_id.as_str())
            .instance_type(InstanceType::from(placement.instance_type))
            // All or nothing per placement: when a zone cannot fit the whole
            // group, EC2 answers InsufficientInstanceCapacity and the group
            // moves to the next type or subnet, rather than half-launching.
            .min_count(placement.count as i32)
            .max_count(placement.count as i32)
            .client_token(placement.token.as_str())
            .iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .name(&blueprint.instance_profile)
                    .build(),
            )
            .set_key_name(blueprint.key_name.clone())
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(placement.root_device)
                    .ebs(ebs)
                    .build(),
            )
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_put_response_hop_limit(1)
                    .build(),
            )
            .set_user_data(
                blueprint
                    .user_data
                    .as_ref()
                    .map(aws_smithy_types::base64::encode),
            )
            .tag_specifications(tag_spec(ResourceType::Instance))
            .tag_specifications(tag_spec(ResourceType::Volume));
        if placement.spot {
            // A one-time request that ends with the instance: a reclaimed
            // instance is replaced by the operator, not revived by EC2.
            call = call.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        if blueprint.associate_public_ip {
            call = call.network_interfaces(
                InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .subnet_id(placement.subnet_id)
                    .associate_public_ip_address(true)
                    .set_groups(Some(blueprint.security_group_ids.clone()))
                    .build(),
            );
        } else {
            call = call
                .subnet_id(placement.subnet_id)
                .set_security_group_ids(Some(blueprint.security_group_ids.clone()));
        }
        let out = observe(&self.recorder, Service::Ec2, "RunInstances", call.send()).await?;
        out.instances()
            .iter()
            .map(|i| {
                FleetInstance::from_sdk(i).ok_or(ComputeError::MalformedResponse {
                    operation: "RunInstances",
                    what: "an instance id",
                })
            })
            .collect()
    }

    /// The instances that every one of `tag_filters` selects and that are not
    /// terminated, following `NextToken` until it is absent (see the module
    /// docs for moto's paging).
    async fn describe_live(
        &self,
        tag_filters: Vec<Filter>,
    ) -> Result<Vec<FleetInstance>, ComputeError> {
        let mut instances = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let call = self
                .ec2
                .describe_instances()
                .set_filters(Some(tag_filters.clone()))
                .filters(
                    Filter::builder()
                        .name("instance-state-name")
                        .set_values(Some(
                            ["pending", "running", "stopping", "stopped", "shutting-down"]
                                .map(str::to_owned)
                                .to_vec(),
                        ))
                        .build(),
                )
                .max_results(self.page_size)
                .set_next_token(next_token.take());
            let page = observe(
                &self.recorder,
                Service::Ec2,
                "DescribeInstances",
                call.send(),
            )
            .await?;
            for reservation in page.reservations() {
                instances.extend(
                    reservation
                        .instances()
                        .iter()
                        .filter_map(FleetInstance::from_sdk),
                );
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => break,
            }
        }
        Ok(instances)
    }

    async fn in_batches<F, Fut>(&self, ids: &[InstanceId], mut call: F) -> Result<(), ComputeError>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: Future<Output = Result<(), ComputeError>>,
    {
        for chunk in ids.chunks(self.batch_size) {
            call(chunk.iter().map(|id| id.as_str().to_owned()).collect()).await?;
        }
        Ok(())
    }
}

/// Which managed instances [`Compute::list_managed`] returns. EC2 applies
/// the filter, so a listing costs only the pages of what it selects: on an
/// account shared by clusters, or a moto shared by parallel tests, the rest
/// is never sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagedFilter {
    /// Only instances the operator of this cluster launched ([`CLUSTER_TAG`]).
    pub cluster: Option<String>,
    /// Only instances of these fleets, `namespace/name` ([`FLEET_TAG`]).
    pub fleets: Option<BTreeSet<String>>,
}

impl ManagedFilter {
    /// Every managed instance.
    pub const EVERY: ManagedFilter = ManagedFilter {
        cluster: None,
        fleets: None,
    };
}

/// The `DescribeInstances` filter for instances tagged `key` = `value`.
fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

/// One `RunInstances` call's placement.
struct Placement<'a> {
    /// Spot capacity, or on demand.
    spot: bool,
    instance_type: &'a str,
    subnet_id: &'a str,
    count: u32,
    sequence: u64,
    token: &'a ClientToken,
    root_device: &'a str,
}

fn volume_type_name(volume_type: VolumeType) -> &'static str {
    match volume_type {
        VolumeType::Gp3 => "gp3",
        VolumeType::Gp2 => "gp2",
        VolumeType::Io1 => "io1",
        VolumeType::Io2 => "io2",
    }
}

/// Splits `count` instances over `subnets` round-robin from `first`: one
/// `(subnet index, count)` group per subnet that receives any.
pub fn spread_over_subnets(count: u32, subnets: usize, first: usize) -> Vec<(usize, u32)> {
    if subnets == 0 || count == 0 {
        return Vec::new();
    }
    let mut groups: Vec<(usize, u32)> = Vec::new();
    for i in 0..count as usize {
        let subnet = (first + i) % subnets;
        match groups.iter_mut().find(|(s, _)| *s == subnet) {
            Some((_, n)) => *n += 1,
            None => groups.push((subnet, 1)),
        }
    }
    groups
}

impl Compute for Ec2Compute {
    async fn resolve_image(&self, source: &ImageSource) -> Result<ImageId, ComputeError> {
        match (&source.image_id, &source.ssm_parameter) {
            (Some(id), None) => {
                ImageId::new(id.clone()).ok_or_else(|| ComputeError::InvalidBlueprint {
                    reason: format!("{id:?} is not an AMI id"),
                })
            }
            (None, Some(parameter)) => {
                let out = observe(
                    &self.recorder,
                    Service::Ssm,
                    "GetParameter",
                    self.ssm.get_parameter().name(parameter).send(),
                )
                .await?;
                let value = out.parameter().and_then(|p| p.value()).unwrap_or_default();
                ImageId::new(value).ok_or_else(|| ComputeError::ImageParameterInvalid {
                    parameter: parameter.clone(),
                    value: value.to_owned(),
                })
            }
            _ => Err(ComputeError::InvalidBlueprint {
                reason: "set exactly one of imageId and ssmParameter".to_owned(),
            }),
        }
    }

    #[tracing::instrument(skip_all, fields(fleet = %fleet, count = request.count, sequence = request.sequence))]
    async fn launch(
        &self,
        fleet: &FleetId,
        blueprint: &InstanceBlueprint,
        request: LaunchRequest,
    ) -> Result<LaunchOutcome, ComputeError> {
        if blueprint.instance_types.is_empty() || blueprint.subnet_ids.is_empty() {
            return Err(ComputeError::InvalidBlueprint {
                reason: "a fleet needs at least one instance type and one subnet".to_owned(),
            });
        }
        let root_device = self.root_device_name(&blueprint.image_id).await?;
        let subnets = &blueprint.subnet_ids;
        let mut outcome = LaunchOutcome::default();
        let groups = spread_over_subnets(request.count, subnets.len(), request.first_subnet);
        let markets: &[bool] = match blueprint.capacity_type {
            CapacityType::OnDemand => &[false],
            CapacityType::Spot => &[true],
            CapacityType::SpotThenOnDemand => &[true, false],
        };
        for (group, (first_subnet, count)) in groups.into_iter().enumerate() {
            let mut attempt = 0;
            let mut placed = false;
            'markets: for &spot in markets {
                for offset in 0..subnets.len() {
                    let subnet_id = &subnets[(first_subnet + offset) % subnets.len()];
                    for instance_type in &blueprint.instance_types {
                        let token =
                            ClientToken::for_attempt(fleet, request.sequence, group, attempt);
                        attempt += 1;
                        let placement = Placement {
                            spot,
                            instance_type,
                            subnet_id,
                            count,
                            sequence: request.sequence,
                            token: &token,
                            root_device: &root_device,
                        };
                        match self.run_instances(fleet, blueprint, placement).await {
                            Ok(instances) => {
                                tracing::info!(
                                    subnet_id,
                                    instance_type,
                                    spot,
                                    launched = instances.len(),
                                    "launched instances"
                                );
                                outcome.instances.extend(instances);
                                placed = true;
                                break 'markets;
                            }
                            Err(ComputeError::Capacity(fault)) => {
                                tracing::warn!(subnet_id, instance_type, spot, code = ?fault.code, "no capacity, trying the next placement");
                                outcome.misses.push(CapacityMiss {
                                    instance_type: instance_type.clone(),
                                    spot,
                                    subnet_id: subnet_id.clone(),
                                    code: fault.code,
                                });
                            }
                            // Instances of earlier groups exist: they are
                            // returned, so that status records them by id,
                            // and the rest stays missing from the recorded
                            // launch for the next reconcile (issue #28 item
                            // 5: the error used to drop them from sight).
                            Err(other) if !outcome.instances.is_empty() => {
                                tracing::warn!(
                                    error = %other,
                                    launched = outcome.instances.len(),
                                    "a placement failed after earlier ones launched; keeping those"
                                );
                                return Ok(outcome);
                            }
                            Err(other) => return Err(other),
                        }
                    }
                }
            }
            if !placed {
                tracing::warn!(group, count, "no placement had capacity");
            }
        }
        if outcome.instances.is_empty() && !outcome.misses.is_empty() {
            return Err(ComputeError::NoCapacity {
                misses: outcome.misses,
            });
        }
        Ok(outcome)
    }

    #[tracing::instrument(skip_all, fields(fleet = %fleet))]
    async fn list_instances(&self, fleet: &FleetId) -> Result<Vec<FleetInstance>, ComputeError> {
        self.describe_live(vec![tag_filter(FLEET_UID_TAG, fleet.uid())])
            .await
    }

    async fn list_managed(
        &self,
        filter: &ManagedFilter,
    ) -> Result<Vec<FleetInstance>, ComputeError> {
        let mut filters = vec![tag_filter(MANAGED_BY_TAG, MANAGED_BY_VALUE)];
        if let Some(cluster) = &filter.cluster {
            filters.push(tag_filter(CLUSTER_TAG, cluster));
        }
        if let Some(fleets) = &filter.fleets {
            if fleets.is_empty() {
                // EC2 refuses a filter without values; no fleet selects nothing.
                return Ok(Vec::new());
            }
            filters.push(
                Filter::builder()
                    .name(format!("tag:{FLEET_TAG}"))
                    .set_values(Some(fleets.iter().cloned().collect()))
                    .build(),
            );
        }
        self.describe_live(filters).await
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<(), ComputeError> {
        self.in_batches(ids, |batch| async move {
            tracing::info!(count = batch.len(), "terminating instances");
            let call = self
                .ec2
                .terminate_instances()
                .set_instance_ids(Some(batch))
                .send();
            observe(&self.recorder, Service::Ec2, "TerminateInstances", call).await?;
            Ok(())
        })
        .await
    }

    async fn stop(&self, ids: &[InstanceId]) -> Result<(), ComputeError> {
        self.in_batches(ids, |batch| async move {
            let call = self
                .ec2
                .stop_instances()
                .set_instance_ids(Some(batch))
                .send();
            observe(&self.recorder, Service::Ec2, "StopInstances", call).await?;
            Ok(())
        })
        .await
    }

    async fn start(&self, ids: &[InstanceId]) -> Result<(), ComputeError> {
        self.in_batches(ids, |batch| async move {
            let call = self
                .ec2
                .start_instances()
                .set_instance_ids(Some(batch))
                .send();
            observe(&self.recorder, Service::Ec2, "StartInstances", call).await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_spread_round_robin_from_the_given_subnet() {
        assert_eq!(spread_over_subnets(5, 3, 1), vec![(1, 2), (2, 2), (0, 1)]);
        assert_eq!(spread_over_subnets(2, 3, 2), vec![(2, 1), (0, 1)]);
        assert_eq!(spread_over_subnets(0, 3, 0), vec![]);
        assert_eq!(spread_over_subnets(4, 0, 0), vec![]);
    }

    #[test]
    fn only_the_drift_user_data_counts_when_given() {
        let mut v1 = blueprint();
        v1.user_data = Some("install agent v1".into());
        v1.drift_user_data = Some("install an agent".into());
        let mut v2 = v1.clone();
        v2.user_data = Some("install agent v2".into());
        assert_eq!(v1.launch_hash(), v2.launch_hash());
        v2.drift_user_data = Some("install an agent elsewhere".into());
        assert_ne!(v1.launch_hash(), v2.launch_hash());
    }

    fn blueprint() -> InstanceBlueprint {
        InstanceBlueprint {
            image_id: ImageId::new("ami-0123456789abcdef0").unwrap(),
            instance_types: vec!["m6i.large".into(), "m5.large".into()],
            subnet_ids: vec!["subnet-01234567".into()],
            security_group_ids: vec!["sg-0000000b".into(), "sg-0000000a".into()],
            instance_profile: "node".into(),
            key_name: None,
            root_volume: RootVolume {
                size_gib: 50,
                volume_type: VolumeType::Gp3,
                encrypted: true,
                kms_key_id: None,
            },
            user_data: Some("#!/bin/bash\n".into()),
            drift_user_data: None,
            associate_public_ip: false,
            capacity_type: CapacityType::OnDemand,
            tags: BTreeMap::from([("team".into(), "qa".into())]),
            cluster: Some("east".into()),
        }
    }

    #[test]
    fn the_launch_hash_is_the_same_in_every_operator_version() {
        // A changed value replaces every instance of every fleet after an
        // upgrade: change the hashed text only on purpose (and its `v1`).
        assert_eq!(blueprint().launch_hash().as_str(), "38a15e38c007314e");
    }

    #[test]
    fn the_launch_hash_changes_with_how_an_instance_runs_only() {
        let base = blueprint().launch_hash();
        let changed: Vec<fn(&mut InstanceBlueprint)> = vec![
            |b| b.image_id = ImageId::new("ami-0123456789abcdef1").unwrap(),
            |b| b.security_group_ids.push("sg-0000000c".into()),
            |b| b.instance_profile = "other".into(),
            |b| b.key_name = Some("key".into()),
            |b| b.root_volume.size_gib = 51,
            |b| b.root_volume.kms_key_id = Some("alias/k".into()),
            |b| b.user_data = Some("#!/bin/sh\n".into()),
            |b| b.associate_public_ip = true,
            |b| {
                b.tags.insert("cost".into(), "1".into());
            },
        ];
        for change in changed {
            let mut b = blueprint();
            change(&mut b);
            assert_ne!(b.launch_hash(), base, "{b:?}");
        }
        let same: Vec<fn(&mut InstanceBlueprint)> = vec![
            |b| b.instance_types.reverse(),
            |b| b.subnet_ids.push("subnet-89abcdef".into()),
            |b| b.security_group_ids.reverse(),
            |b| b.cluster = None,
        ];
        for change in same {
            let mut b = blueprint();
            change(&mut b);
            assert_eq!(b.launch_hash(), base, "{b:?}");
        }
    }

    #[test]
    fn client_tokens_are_stable_distinct_and_short() {
        let fleet = FleetId::new("ns", "web", "0b6c4f1e-3b4a-4e8d-9a51-7f3e2d1c0b9a").unwrap();
        let a = ClientToken::for_attempt(&fleet, u64::MAX, 999, 99_999);
        assert!(a.as_str().len() <= MAX_CLIENT_TOKEN_LEN, "{}", a.as_str());
        assert_eq!(
            ClientToken::for_attempt(&fleet, 7, 0, 0),
            ClientToken::for_attempt(&fleet, 7, 0, 0)
        );
        assert_ne!(
            ClientToken::for_attempt(&fleet, 7, 0, 0),
            ClientToken::for_attempt(&fleet, 7, 0, 1)
        );
        assert_ne!(
            ClientToken::for_attempt(&fleet, 7, 0, 0),
            ClientToken::for_attempt(&fleet, 8, 0, 0)
        );
    }

    #[test]
    fn image_ids_must_look_like_amis() {
        assert!(ImageId::new("ami-0abc").is_some());
        assert!(ImageId::new("ami-").is_none());
        assert!(ImageId::new("i-0abc").is_none());
    }
}
