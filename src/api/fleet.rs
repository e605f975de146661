//! `BrowserFleet`: a fleet of EC2 instances running browsers for CDP clients.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::disruption::{DisruptionBudget, DisruptionReason, DisruptionSpec, ReplacementWaiting};
use super::switches::sets_agent_owned_switch;
use super::validation::{CrossFieldRule, Violations};

/// Condition type: the fleet serves sessions at its desired size.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: the fleet is launching or retiring instances.
pub const CONDITION_SCALING: &str = "Scaling";
/// Condition type: something needs a human (invalid spec, AWS errors, instances
/// that never became ready).
pub const CONDITION_DEGRADED: &str = "Degraded";

/// How long an agent gives a browser to answer DevTools after starting it;
/// the operator writes it into every agent configuration.
pub const BROWSER_START_TIMEOUT_SECONDS: i32 = 30;

/// The shortest request visibility timeout: longer than a browser may take
/// to start, or a request would reappear on the queue, and reach another
/// agent, while its browser starts.
pub const MIN_VISIBILITY_TIMEOUT_SECONDS: i32 = BROWSER_START_TIMEOUT_SECONDS + 1;

/// Schema patterns for the AWS identifiers a fleet names. They only check the
/// shape, so a typo is refused at `kubectl apply` instead of at launch time.
pub mod patterns {
    /// An AMI id such as `ami-0abc1234def567890`.
    pub const AMI_ID: &str = "^ami-([0-9a-f]{8}|[0-9a-f]{17})$";
    /// A subnet id such as `subnet-0abc1234def567890`.
    pub const SUBNET_ID: &str = "^subnet-([0-9a-f]{8}|[0-9a-f]{17})$";
    /// A security group id such as `sg-0abc1234def567890`.
    pub const SECURITY_GROUP_ID: &str = "^sg-([0-9a-f]{8}|[0-9a-f]{17})$";
    /// An SSM Parameter Store name, with or without a leading `/`. Its length
    /// (at most 2048) is the field's `maxLength`: Go's regexp, which
    /// kube-apiserver compiles patterns with, refuses repeat counts above 1000.
    pub const SSM_PARAMETER_NAME: &str = "^[A-Za-z0-9_.\\-/]+$";
    /// An EC2 instance type such as `m6i.xlarge` or `c7i.metal-24xl`.
    pub const INSTANCE_TYPE: &str = "^[a-z][a-z0-9-]*\\.[a-z0-9-]+$";
    /// An IAM instance profile, by name or by ARN.
    pub const INSTANCE_PROFILE: &str = "^([A-Za-z0-9+=,.@_-]{1,128}|arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/[A-Za-z0-9+=,.@_/-]{1,512})$";
    /// A KMS key id, key ARN, alias name or alias ARN.
    pub const KMS_KEY: &str = "^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}|alias/[A-Za-z0-9/_-]{1,250}|arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/[A-Za-z0-9/_-]{1,250})$";
    /// An SQS queue URL (https on AWS; http for local endpoints such as moto).
    pub const QUEUE_URL: &str = "^https?://[^\\s]+/[0-9]{12}/[A-Za-z0-9_-]{1,80}(\\.fifo)?$";
    /// A reply queue: an SQS queue URL without `user:password@`. The agent
    /// checks the port as well (`crate::protocol::ReplyQueueUrl`).
    pub const REPLY_QUEUE_URL: &str =
        "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s/?#@]+/[0-9]{12}/[A-Za-z0-9_-]{1,80}(\\.fifo)?$";
    /// A callback: an http(s) URL with a host and without `user:password@`.
    /// The agent checks the port as well (`crate::protocol::CallbackUrl`).
    pub const CALLBACK_URL: &str = "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s/?#@]+([/?#][^\\s]*)?$";
    /// Where the agent artifact is downloaded from.
    pub const ARTIFACT_URL: &str = "^(https?|s3)://[^\\s]+$";
    /// An IPv4 or IPv6 address, optionally with a prefix length
    /// (`10.0.0.0/8`, `fd00:ec2::/64`). IPv4 is checked exactly; IPv6 by
    /// its alphabet and prefix only, and the agent refuses a configuration
    /// whose range does not parse.
    pub const CIDR: &str = "^(((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(/([0-9]|[12][0-9]|3[0-2]))?|[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f]{0,4}){2,7}(/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))?)$";
    /// A lower-case hex SHA-256 digest.
    pub const SHA256: &str = "^[0-9a-f]{64}$";
    /// A Chromium command-line switch, optionally with a value: `--name` or
    /// `--name=value`, the name in lower case (see [`crate::api::switches`]).
    pub const BROWSER_SWITCH: &str = crate::api::switches::SWITCH_PATTERN;
}

/// The cross-field rules of [`BrowserFleetSpec`], enforced by CEL in the CRD
/// and by [`BrowserFleetSpec::validate`].
pub mod rules {
    use std::sync::LazyLock;

    use super::CrossFieldRule;
    use crate::api::switches::no_agent_owned_switch_rule;

    /// The floor of the fleet cannot be above its ceiling.
    pub const MIN_WITHIN_MAX: CrossFieldRule = CrossFieldRule {
        cel: "self.capacity.minInstances <= self.capacity.maxInstances",
        message: "minInstances must not be greater than maxInstances",
        field_path: ".capacity.minInstances",
    };
    /// Warm headroom must fit under the ceiling.
    pub const WARM_WITHIN_MAX: CrossFieldRule = CrossFieldRule {
        cel: "self.capacity.warmInstances <= self.capacity.maxInstances",
        message: "warmInstances must not be greater than maxInstances",
        field_path: ".capacity.warmInstances",
    };
    /// The instance image comes from exactly one place.
    pub const ONE_IMAGE_SOURCE: CrossFieldRule = CrossFieldRule {
        cel: "has(self.instance.image.imageId) != has(self.instance.image.ssmParameter)",
        message: "set exactly one of imageId and ssmParameter",
        field_path: ".instance.image",
    };
    /// A KMS key only makes sense on an encrypted volume.
    pub const KMS_KEY_NEEDS_ENCRYPTION: CrossFieldRule = CrossFieldRule {
        cel: "!has(self.instance.rootVolume.kmsKeyId) || self.instance.rootVolume.encrypted",
        message: "kmsKeyId requires encrypted: true",
        field_path: ".instance.rootVolume.kmsKeyId",
    };
    /// EC2 limits tag keys to 128 characters; the operator's own tags cannot
    /// be overridden, and `aws:` is reserved by AWS.
    pub const USER_TAGS_NOT_RESERVED: CrossFieldRule = CrossFieldRule {
        cel: "!has(self.instance.tags) || self.instance.tags.all(k, size(k) >= 1 && size(k) <= 128 && !k.startsWith('browserfleet.io/') && !k.startsWith('aws:'))",
        message: "tag keys must have 1 to 128 characters and not start with browserfleet.io/ or aws:",
        field_path: ".instance.tags",
    };
    /// The browser port range runs upwards; one port is a range too (for a
    /// fleet of one session per instance). [`super::PortRange::is_ordered`]
    /// is the same rule for the agent.
    pub const PORT_RANGE_ORDERED: CrossFieldRule = CrossFieldRule {
        cel: "self.agent.browserPortRange.start <= self.agent.browserPortRange.end",
        message: "browserPortRange.start must not be greater than browserPortRange.end",
        field_path: ".agent.browserPortRange",
    };
    /// Every session on an instance needs a DevTools port of its own. Checked
    /// only on an ordered range, so a reversed range is reported once.
    pub const PORT_RANGE_FITS_SESSIONS: CrossFieldRule = CrossFieldRule {
        cel: "self.agent.browserPortRange.start > self.agent.browserPortRange.end || self.agent.browserPortRange.end - self.agent.browserPortRange.start + 1 >= self.capacity.sessionsPerInstance",
        message: "browserPortRange must hold at least sessionsPerInstance ports",
        field_path: ".agent.browserPortRange",
    };
    /// The gateway cannot share a port with a browser.
    pub const GATEWAY_OUTSIDE_PORT_RANGE: CrossFieldRule = CrossFieldRule {
        cel: "self.agent.gatewayPort < self.agent.browserPortRange.start || self.agent.gatewayPort > self.agent.browserPortRange.end",
        message: "gatewayPort must lie outside browserPortRange",
        field_path: ".agent.gatewayPort",
    };
    /// A session's default lifetime cannot exceed the hard maximum.
    pub const DEFAULT_TTL_WITHIN_MAX: CrossFieldRule = CrossFieldRule {
        cel: "self.agent.sessions.defaultTtlSeconds <= self.agent.sessions.maxTtlSeconds",
        message: "sessions.defaultTtlSeconds must not be greater than sessions.maxTtlSeconds",
        field_path: ".agent.sessions.defaultTtlSeconds",
    };
    /// The browser is started one way.
    pub const ONE_LAUNCH_METHOD: CrossFieldRule = CrossFieldRule {
        cel: "!(has(self.agent.browser.executable) && has(self.agent.browser.launcherCommand))",
        message: "set at most one of browser.executable and browser.launcherCommand",
        field_path: ".agent.browser",
    };
    /// DevTools wiring and profile placement belong to the agent alone: a
    /// fleet cannot let sessions set them.
    pub static ALLOWED_ARGS_NOT_RESERVED: LazyLock<CrossFieldRule> = LazyLock::new(|| {
        no_agent_owned_switch_rule(
            "agent.browser.allowedArgs",
            "allowedArgs cannot allow",
            ".agent.browser.allowedArgs",
        )
    });
    /// Nor set them itself: the agent appends its own values, and a fleet
    /// whose arguments name them would boot agents that refuse their
    /// configuration.
    pub static EXTRA_ARGS_NOT_AGENT_OWNED: LazyLock<CrossFieldRule> = LazyLock::new(|| {
        no_agent_owned_switch_rule(
            "agent.browser.extraArgs",
            "extraArgs cannot set",
            ".agent.browser.extraArgs",
        )
    });
    /// Auto-logon is a Windows mechanism.
    pub const AUTO_LOGON_ONLY_ON_WINDOWS: CrossFieldRule = CrossFieldRule {
        cel: "!has(self.agent.windowsAutoLogon) || self.instance.platform == 'Windows'",
        message: "windowsAutoLogon requires instance.platform Windows",
        field_path: ".agent.windowsAutoLogon",
    };
    /// A headful browser on Windows needs a logged-on desktop to draw on.
    pub const HEADFUL_WINDOWS_NEEDS_AUTO_LOGON: CrossFieldRule = CrossFieldRule {
        cel: "self.agent.browser.headless || self.instance.platform != 'Windows' || has(self.agent.windowsAutoLogon)",
        message: "a headful browser on Windows requires agent.windowsAutoLogon",
        field_path: ".agent.browser.headless",
    };

    /// Every rule, in the order the CRD lists them.
    pub fn all() -> [CrossFieldRule; 14] {
        [
            MIN_WITHIN_MAX,
            WARM_WITHIN_MAX,
            ONE_IMAGE_SOURCE,
            KMS_KEY_NEEDS_ENCRYPTION,
            USER_TAGS_NOT_RESERVED,
            PORT_RANGE_ORDERED,
            PORT_RANGE_FITS_SESSIONS,
            GATEWAY_OUTSIDE_PORT_RANGE,
            DEFAULT_TTL_WITHIN_MAX,
            ONE_LAUNCH_METHOD,
            *ALLOWED_ARGS_NOT_RESERVED,
            *EXTRA_ARGS_NOT_AGENT_OWNED,
            AUTO_LOGON_ONLY_ON_WINDOWS,
            HEADFUL_WINDOWS_NEEDS_AUTO_LOGON,
        ]
    }
}

/// Desired state of a fleet of browser instances.
// kube's printcolumn(...) lists repeat `type_ = ...`, which clippy mistakes
// for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "browserfleet.io",
    version = "v1alpha1",
    kind = "BrowserFleet",
    plural = "browserfleets",
    singular = "browserfleet",
    namespaced,
    status = "BrowserFleetStatus",
    shortname = "bfleet",
    category = "browserfleet",
    derive = "PartialEq",
    doc = "A fleet of EC2 instances, each running a browserfleet agent that hosts browsers for Chrome DevTools Protocol clients, sized from the depth of a session request queue.",
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredInstances",
        description = "Instances the operator wants"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyInstances",
        description = "Instances whose agent takes sessions"
    ),
    printcolumn(
        name = "Sessions",
        type_ = "integer",
        json_path = ".status.activeSessions",
        description = "Live browser sessions"
    ),
    printcolumn(
        name = "Capacity",
        type_ = "integer",
        json_path = ".status.sessionCapacity",
        description = "Session slots on ready instances"
    ),
    printcolumn(
        name = "Queue",
        type_ = "integer",
        json_path = ".status.queueVisible",
        description = "Requests waiting in the request queue"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = rules::MIN_WITHIN_MAX.to_cel(),
    validation = rules::WARM_WITHIN_MAX.to_cel(),
    validation = rules::ONE_IMAGE_SOURCE.to_cel(),
    validation = rules::KMS_KEY_NEEDS_ENCRYPTION.to_cel(),
    validation = rules::USER_TAGS_NOT_RESERVED.to_cel(),
    validation = rules::PORT_RANGE_ORDERED.to_cel(),
    validation = rules::PORT_RANGE_FITS_SESSIONS.to_cel(),
    validation = rules::GATEWAY_OUTSIDE_PORT_RANGE.to_cel(),
    validation = rules::DEFAULT_TTL_WITHIN_MAX.to_cel(),
    validation = rules::ONE_LAUNCH_METHOD.to_cel(),
    validation = rules::ALLOWED_ARGS_NOT_RESERVED.to_cel(),
    validation = rules::EXTRA_ARGS_NOT_AGENT_OWNED.to_cel(),
    validation = rules::AUTO_LOGON_ONLY_ON_WINDOWS.to_cel(),
    validation = rules::HEADFUL_WINDOWS_NEEDS_AUTO_LOGON.to_cel()
)]
#[serde(rename_all = "camelCase")]
pub struct BrowserFleetSpec {
    /// How each EC2 instance of the fleet is launched.
    pub instance: InstanceSpec,
    /// How many instances the fleet may have and how many sessions each hosts.
    pub capacity: CapacitySpec,
    /// How fast the fleet grows and shrinks.
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// The SQS queue that session requests arrive on.
    #[serde(default)]
    pub queue: QueueSpec,
    /// How the agent on each instance runs browsers.
    #[serde(default)]
    pub agent: AgentSpec,
    /// When running instances are replaced (a changed launch spec, or age)
    /// and how many at once.
    #[serde(default)]
    pub disruption: DisruptionSpec,
    /// When true the operator keeps every running instance and session as it is
    /// and launches, drains and terminates nothing; status is still updated.
    #[serde(default)]
    pub paused: bool,
}

impl BrowserFleetSpec {
    /// Checks the cross-field rules the CRD enforces with CEL, and the reply
    /// URLs whose shape its patterns only approximate, and returns every one
    /// that is broken, so the operator can report them all at once.
    pub fn validate(&self) -> Result<(), Violations> {
        let capacity = &self.capacity;
        let image = &self.instance.image;
        let volume = &self.instance.root_volume;
        let ports = &self.agent.browser_port_range;
        let browser = &self.agent.browser;
        let windows = self.instance.platform == Platform::Windows;
        let mut found = Violations::default();
        found.check(
            &rules::MIN_WITHIN_MAX,
            capacity.min_instances <= capacity.max_instances,
        );
        found.check(
            &rules::WARM_WITHIN_MAX,
            capacity.warm_instances <= capacity.max_instances,
        );
        found.check(
            &rules::ONE_IMAGE_SOURCE,
            image.image_id.is_some() != image.ssm_parameter.is_some(),
        );
        found.check(
            &rules::KMS_KEY_NEEDS_ENCRYPTION,
            volume.kms_key_id.is_none() || volume.encrypted,
        );
        found.check(
            &rules::USER_TAGS_NOT_RESERVED,
            self.instance.tags.keys().all(|k| {
                // CEL's size() counts code points, not bytes.
                (1..=128).contains(&k.chars().count())
                    && !k.starts_with("browserfleet.io/")
                    && !k.starts_with("aws:")
            }),
        );
        found.check(&rules::PORT_RANGE_ORDERED, ports.is_ordered());
        found.check(
            &rules::PORT_RANGE_FITS_SESSIONS,
            !ports.is_ordered() || ports.len() >= i64::from(capacity.sessions_per_instance),
        );
        found.check(
            &rules::GATEWAY_OUTSIDE_PORT_RANGE,
            self.agent.gateway_port < ports.start || self.agent.gateway_port > ports.end,
        );
        found.check(
            &rules::DEFAULT_TTL_WITHIN_MAX,
            self.agent.sessions.default_ttl_seconds <= self.agent.sessions.max_ttl_seconds,
        );
        found.check(
            &rules::ONE_LAUNCH_METHOD,
            browser.executable.is_none() || browser.launcher_command.is_none(),
        );
        found.check(
            &rules::ALLOWED_ARGS_NOT_RESERVED,
            !browser
                .allowed_args
                .iter()
                .any(|a| sets_agent_owned_switch(a)),
        );
        found.check(
            &rules::EXTRA_ARGS_NOT_AGENT_OWNED,
            !browser
                .extra_args
                .iter()
                .any(|a| sets_agent_owned_switch(a)),
        );
        found.check(
            &rules::AUTO_LOGON_ONLY_ON_WINDOWS,
            self.agent.windows_auto_logon.is_none() || windows,
        );
        found.check(
            &rules::HEADFUL_WINDOWS_NEEDS_AUTO_LOGON,
            browser.headless || !windows || self.agent.windows_auto_logon.is_some(),
        );
        let replies = &self.agent.replies;
        if let Some(Err(refused)) = replies
            .default_reply_to
            .as_ref()
            .map(|url| crate::protocol::ReplyQueueUrl::new(url.as_str()))
        {
            found.refuse("spec.agent.replies.defaultReplyTo", refused.reason);
        }
        if let Some(Err(refused)) = replies
            .default_callback_url
            .as_ref()
            .map(|url| crate::protocol::CallbackUrl::new(url.as_str()))
        {
            found.refuse("spec.agent.replies.defaultCallbackUrl", refused.reason);
        }
        // Patterns the parsers match exactly: refused here only for objects
        // written past a CRD without them.
        if DisruptionBudget::parse(&self.disruption.budget).is_none() {
            found.refuse(
                "spec.disruption.budget",
                "must be a count such as \"1\" or a percentage such as \"10%\"",
            );
        }
        if self.disruption.expire_after.is_some() && self.disruption.expire_after().is_none() {
            found.refuse(
                "spec.disruption.expireAfter",
                "must be a positive number of s, m, h or d such as \"72h\"",
            );
        }
        found.into_result()
    }
}

/// Operating system family of the fleet's image; decides how the agent is
/// installed (PowerShell or shell) and how browsers are found and stopped.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Platform {
    /// Windows Server; the agent runs in the auto-logged-on desktop session or
    /// as a service for headless fleets.
    #[default]
    Windows,
    /// Linux; the agent runs as a systemd service.
    Linux,
}

/// How each EC2 instance of the fleet is launched.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSpec {
    /// Operating system family of the image.
    #[serde(default)]
    pub platform: Platform,
    /// The machine image (AMI) to launch; set exactly one of its fields.
    pub image: ImageSource,
    /// Instance types in order of preference. When EC2 has no capacity for one
    /// (InsufficientInstanceCapacity, Unsupported) the next is tried, then the
    /// next subnet.
    #[schemars(length(min = 1, max = 10), inner(pattern(patterns::INSTANCE_TYPE)))]
    pub instance_types: Vec<String>,
    /// Subnets to launch into; new instances are spread across them round-robin.
    #[schemars(length(min = 1, max = 16), inner(pattern(patterns::SUBNET_ID)))]
    pub subnet_ids: Vec<String>,
    /// Security groups for the instances. They must let the operator and
    /// clients reach the agent's gateway port.
    #[schemars(length(min = 1, max = 5), inner(pattern(patterns::SECURITY_GROUP_ID)))]
    pub security_group_ids: Vec<String>,
    /// IAM instance profile (name or ARN) the instances run as. It needs at least
    /// the AmazonSSMManagedInstanceCore policy, SQS access to the fleet's queues
    /// and read access to the agent configuration parameter.
    #[schemars(pattern(patterns::INSTANCE_PROFILE))]
    pub instance_profile: String,
    /// EC2 key pair for emergency access; omit to launch without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub key_name: Option<String>,
    /// The root EBS volume.
    #[serde(default)]
    pub root_volume: RootVolumeSpec,
    /// Extra tags for instances and volumes: at most 40, keys of 1 to 128
    /// characters, values of up to 256. Keys starting with `browserfleet.io/`
    /// or `aws:` are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 40,
        "additionalProperties" = {"type": "string", "maxLength": 256}
    ))]
    pub tags: BTreeMap<String, String>,
    /// Script appended to the user data the operator generates (PowerShell on
    /// Windows, shell on Linux). Never put secrets here: user data is readable
    /// from inside the instance and by anyone with ec2:DescribeInstanceAttribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub user_data_append: Option<String>,
    /// Give instances a public IPv4 address. Off by default: clients are
    /// expected to reach the gateway inside the VPC.
    #[serde(default)]
    pub associate_public_ip: bool,
    /// On-demand or spot capacity; `spot-then-on-demand` launches on demand
    /// where spot has no capacity.
    #[serde(default, skip_serializing_if = "CapacityType::is_on_demand")]
    pub capacity_type: CapacityType,
}

/// What EC2 capacity a fleet's instances run on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CapacityType {
    /// On-demand instances.
    #[default]
    #[serde(rename = "on-demand")]
    OnDemand,
    /// Spot instances only (cheaper; EC2 may reclaim them with a two-minute
    /// notice).
    #[serde(rename = "spot")]
    Spot,
    /// Spot, and on demand for what spot has no capacity for.
    #[serde(rename = "spot-then-on-demand")]
    SpotThenOnDemand,
}

impl CapacityType {
    fn is_on_demand(&self) -> bool {
        *self == CapacityType::OnDemand
    }
}

/// Where the AMI comes from; set exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSource {
    /// A fixed AMI id, e.g. `ami-0abc1234def567890`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::AMI_ID))]
    pub image_id: Option<String>,
    /// An SSM parameter whose value is an AMI id, resolved at every launch, e.g.
    /// `/aws/service/ami-windows-latest/Windows_Server-2022-English-Full-Base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(patterns::SSM_PARAMETER_NAME))]
    pub ssm_parameter: Option<String>,
}

/// Where replies go for requests that name no reply target, and how every
/// reply to a requester is written. Replies on the fleet's own events queue
/// (BrowserSessions, forwarded deletes) are always protocol v1.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplyPolicy {
    /// SQS queue that gets the replies of requests naming neither `replyTo`
    /// nor `callbackUrl` (the launcher's `SQS_RESPONSE_QUEUE_URL`). The agents'
    /// instance role needs `sqs:SendMessage` on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(patterns::REPLY_QUEUE_URL))]
    pub default_reply_to: Option<String>,
    /// HTTP(S) endpoint that gets those replies too, signed like every
    /// callback (the launcher's `BROWSER_API_CALLBACK_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(patterns::CALLBACK_URL))]
    pub default_callback_url: Option<String>,
    /// Field names of replies to requesters: `v1` (this project's protocol)
    /// or `launcher` (the Browser Automation Launcher's `session_id`,
    /// `worker_id`, `websocket_url`, …, with the token in the URLs' query).
    #[serde(default)]
    pub format: ReplyFormat,
}

impl ReplyPolicy {
    /// Whether nothing is set (the field is then left out of the manifest).
    pub fn is_default(&self) -> bool {
        *self == ReplyPolicy::default()
    }
}

/// How replies to requesters are written.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplyFormat {
    /// Protocol v1: `sessionId`, `endpoints`, `token`, `expiresAt`, ….
    #[default]
    V1,
    /// The Browser Automation Launcher's fields: `session_id`, `worker_id`,
    /// `debug_port`, `websocket_url`, `debug_url`, `expires_at`.
    Launcher,
}

/// EBS volume type of the root volume.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    /// General purpose SSD, current generation.
    #[default]
    Gp3,
    /// General purpose SSD, previous generation.
    Gp2,
    /// Provisioned IOPS SSD.
    Io1,
    /// Provisioned IOPS SSD, current generation.
    Io2,
}

/// The instance's root EBS volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootVolumeSpec {
    /// Size in GiB. Windows Server needs at least 30.
    #[serde(default = "default_root_volume_gib", rename = "sizeGiB")]
    #[schemars(range(min = 8, max = 16384))]
    pub size_gib: i32,
    /// EBS volume type.
    #[serde(default)]
    pub volume_type: VolumeType,
    /// Encrypt the volume. On by default.
    #[serde(default = "default_true")]
    pub encrypted: bool,
    /// KMS key for the encryption (id, ARN or alias); the account's default EBS
    /// key when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::KMS_KEY))]
    pub kms_key_id: Option<String>,
}

impl Default for RootVolumeSpec {
    fn default() -> Self {
        Self {
            size_gib: default_root_volume_gib(),
            volume_type: VolumeType::default(),
            encrypted: true,
            kms_key_id: None,
        }
    }
}

/// How many instances the fleet may have and how many sessions each hosts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacitySpec {
    /// The fleet never shrinks below this many instances.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_instances: i32,
    /// The fleet never grows beyond this many instances. Required: it is the
    /// ceiling on what the fleet can cost.
    #[schemars(range(min = 0, max = 1000))]
    pub max_instances: i32,
    /// Concurrent browser sessions per instance.
    #[serde(default = "default_sessions_per_instance")]
    #[schemars(range(min = 1, max = 64))]
    pub sessions_per_instance: i32,
    /// Ready, idle instances kept on top of demand so that a burst does not wait
    /// for an instance to boot.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub warm_instances: i32,
}

/// How fast the fleet grows and shrinks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSpec {
    /// Demand must have been lower for this long before the fleet shrinks, so a
    /// short lull does not retire instances that take minutes to replace. The
    /// default is the best trade-off between queue wait and instance-hours
    /// found by `browserfleet simulate` (docs/scaling.md).
    #[serde(default = "default_scale_down_stabilization_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
    /// At most this many instances are launched in any minute: a ceiling on
    /// how fast a runaway queue can spend money. Below about 30 a tenfold burst
    /// waits for launches as well as for boots (docs/scaling.md).
    #[serde(default = "default_max_launches_per_minute")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_launches_per_minute: i32,
    /// An instance must have hosted no session for this long before it may be
    /// retired, on top of the stabilization window.
    #[serde(default = "default_idle_timeout_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub idle_timeout_seconds: i32,
    /// A draining instance is terminated after this long even if sessions remain.
    #[serde(default = "default_drain_timeout_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_timeout_seconds: i32,
    /// An instance whose agent has not reported ready this long after launch is
    /// replaced.
    #[serde(default = "default_ready_timeout_seconds")]
    #[schemars(range(min = 60, max = 7200))]
    pub ready_timeout_seconds: i32,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            scale_down_stabilization_seconds: default_scale_down_stabilization_seconds(),
            max_launches_per_minute: default_max_launches_per_minute(),
            idle_timeout_seconds: default_idle_timeout_seconds(),
            drain_timeout_seconds: default_drain_timeout_seconds(),
            ready_timeout_seconds: default_ready_timeout_seconds(),
        }
    }
}

/// The SQS queue that session requests arrive on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Use this existing request queue instead of creating one. The operator
    /// then neither configures nor deletes it (nor a dead-letter queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), pattern(patterns::QUEUE_URL))]
    pub request_queue_url: Option<String>,
    /// How long a received request stays invisible to other agents while one
    /// launches its browser: at least 31 seconds, longer than the 30 a
    /// browser is given to start.
    #[serde(default = "default_visibility_timeout_seconds")]
    #[schemars(range(min = MIN_VISIBILITY_TIMEOUT_SECONDS, max = 43200))]
    pub visibility_timeout_seconds: i32,
    /// Receives after which a request that no agent could handle moves to the
    /// dead-letter queue.
    #[serde(default = "default_max_receive_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_receive_count: i32,
    /// How long an unhandled request is kept in the queue.
    #[serde(default = "default_message_retention_seconds")]
    #[schemars(range(min = 60, max = 1209600))]
    pub message_retention_seconds: i32,
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self {
            request_queue_url: None,
            visibility_timeout_seconds: default_visibility_timeout_seconds(),
            max_receive_count: default_max_receive_count(),
            message_retention_seconds: default_message_retention_seconds(),
        }
    }
}

/// How the agent on each instance runs browsers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Agent build to install and keep installed through SSM Run Command; when
    /// omitted the image must already contain the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<AgentArtifact>,
    /// Port of the agent's single HTTP listener: health, control API, metrics
    /// and the authenticated DevTools gateway.
    #[serde(default = "default_gateway_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub gateway_port: i32,
    /// Local ports the browsers' DevTools endpoints bind to, on 127.0.0.1 only.
    #[serde(default)]
    pub browser_port_range: PortRange,
    /// Which browser is started and with which arguments.
    #[serde(default)]
    pub browser: BrowserSpec,
    /// Session lifetimes.
    #[serde(default)]
    pub sessions: SessionLimits,
    /// Browser profiles kept on the instance.
    #[serde(default)]
    pub profiles: ProfilePolicy,
    /// Where replies go when a request names no target of its own, and in
    /// which shape: what producers of the Browser Automation Launcher
    /// configured as `SQS_RESPONSE_QUEUE_URL` and `BROWSER_API_CALLBACK_URL`.
    #[serde(default, skip_serializing_if = "ReplyPolicy::is_default")]
    pub replies: ReplyPolicy,
    /// Log a Windows user on automatically at boot so the agent and headful
    /// browsers run in an interactive desktop session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_auto_logon: Option<WindowsAutoLogon>,
    /// Where the browsers may connect. Every browser's traffic goes through
    /// the agent's egress proxy, which refuses the instance metadata service
    /// and other link-local addresses, loopback and the node's own ports
    /// unless allowed here.
    #[serde(default, skip_serializing_if = "EgressSpec::is_default")]
    pub egress: EgressSpec,
    /// How a changed `artifact` reaches running instances: in place,
    /// through SSM Run Command, a bounded batch at a time (docs/nodes.md).
    #[serde(default)]
    pub upgrade: UpgradeSpec,
}

/// The in-place rollout of a new agent artifact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSpec {
    /// Instances upgraded at once (SSM's `MaxConcurrency`).
    #[serde(default = "default_upgrade_max_concurrency")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrency: i32,
    /// Failed upgrades tolerated before the rollout stops (SSM's
    /// `MaxErrors`): 0 stops at the first.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub max_errors: i32,
}

fn default_upgrade_max_concurrency() -> i32 {
    1
}

impl Default for UpgradeSpec {
    fn default() -> Self {
        UpgradeSpec {
            max_concurrency: default_upgrade_max_concurrency(),
            max_errors: 0,
        }
    }
}

/// The egress policy of a fleet's browsers (docs/security.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressSpec {
    /// Port of the agent's egress proxy, on 127.0.0.1 only.
    #[serde(default = "default_egress_proxy_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub proxy_port: i32,
    /// CIDR ranges (or single addresses) the browsers may not reach, such as
    /// the VPC's own range. Blocked beats allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64), pattern(patterns::CIDR)))]
    pub blocked: Vec<String>,
    /// CIDR ranges (or single addresses) let through although refused by
    /// default (link-local, loopback). The node's own ports stay refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64), pattern(patterns::CIDR)))]
    pub allowed: Vec<String>,
}

fn default_egress_proxy_port() -> i32 {
    9221
}

impl Default for EgressSpec {
    fn default() -> Self {
        Self {
            proxy_port: default_egress_proxy_port(),
            blocked: Vec::new(),
            allowed: Vec::new(),
        }
    }
}

impl EgressSpec {
    /// Whether nothing was set (left out of a rendered manifest).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            artifact: None,
            gateway_port: default_gateway_port(),
            browser_port_range: PortRange::default(),
            browser: BrowserSpec::default(),
            sessions: SessionLimits::default(),
            profiles: ProfilePolicy::default(),
            replies: ReplyPolicy::default(),
            windows_auto_logon: None,
            egress: EgressSpec::default(),
            upgrade: UpgradeSpec::default(),
        }
    }
}

/// A downloadable agent build, checked against its digest before it is run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentArtifact {
    /// https, http or s3 URL of the agent binary or archive.
    #[schemars(length(max = 2048), pattern(patterns::ARTIFACT_URL))]
    pub url: String,
    /// Lower-case hex SHA-256 of the artifact; a mismatch aborts the install.
    #[schemars(pattern(patterns::SHA256))]
    pub sha256: String,
}

/// An inclusive range of TCP ports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    /// First port of the range.
    #[schemars(range(min = 1024, max = 65535))]
    pub start: i32,
    /// Last port of the range (inclusive).
    #[schemars(range(min = 1024, max = 65535))]
    pub end: i32,
}

impl PortRange {
    /// Whether the range runs upwards (a single port included): the rule
    /// the CRD's CEL, `validate()` and the agent apply.
    pub fn is_ordered(&self) -> bool {
        self.start <= self.end
    }

    /// How many ports it holds; zero or less when it is not ordered.
    pub fn len(&self) -> i64 {
        i64::from(self.end) - i64::from(self.start) + 1
    }

    /// Whether it holds no port.
    pub fn is_empty(&self) -> bool {
        self.len() <= 0
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self {
            start: 9300,
            end: 9399,
        }
    }
}

/// Which browser is started and with which arguments.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrowserSpec {
    /// Absolute path of the browser executable; found in the usual install
    /// locations of Chrome, Chromium and Edge when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub executable: Option<String>,
    /// A command (program and arguments) that starts the browser instead; the
    /// agent appends the DevTools port, profile directory and session arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 1024)))]
    pub launcher_command: Option<Vec<String>>,
    /// Run browsers without a window. A headful browser on Windows needs
    /// `windowsAutoLogon`.
    #[serde(default = "default_true")]
    pub headless: bool,
    /// Arguments added to every browser of the fleet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 1024), pattern(patterns::BROWSER_SWITCH))
    )]
    pub extra_args: Vec<String>,
    /// Switches sessions may not pass, on top of the agent's built-in blocklist
    /// (`--remote-debugging-*`, `--user-data-dir` and other dangerous flags). A
    /// switch matches with or without a value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 256), pattern(patterns::BROWSER_SWITCH))
    )]
    pub blocked_args: Vec<String>,
    /// Switches from the built-in blocklist that sessions of this fleet may pass,
    /// e.g. `--disable-web-security`. The switches the agent sets itself
    /// (`--remote-debugging-*`, `--user-data-dir*`, `--remote-allow-origins`,
    /// `--profile-directory`, `--single-argument`) can never be allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 256), pattern(patterns::BROWSER_SWITCH))
    )]
    pub allowed_args: Vec<String>,
}

impl Default for BrowserSpec {
    fn default() -> Self {
        Self {
            executable: None,
            launcher_command: None,
            headless: true,
            extra_args: Vec::new(),
            blocked_args: Vec::new(),
            allowed_args: Vec::new(),
        }
    }
}

/// Session lifetimes enforced by the agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionLimits {
    /// Lifetime of a session whose request names none.
    #[serde(default = "default_session_ttl_seconds")]
    #[schemars(range(min = 1, max = 604800))]
    pub default_ttl_seconds: i32,
    /// Hard maximum lifetime; longer requests are cut to it.
    #[serde(default = "default_max_session_ttl_seconds")]
    #[schemars(range(min = 1, max = 604800))]
    pub max_ttl_seconds: i32,
    /// A session that no client has used (no DevTools connection, still on its
    /// start page) this long after start is ended with reason `neverUsed`.
    #[serde(default = "default_never_used_timeout_seconds")]
    #[schemars(range(min = 10, max = 86400))]
    pub never_used_timeout_seconds: i32,
    /// A BrowserSession that no agent has started this long after its request
    /// was enqueued ends `Failed` with reason `StartTimeout`; agents refuse
    /// its request from then on. Sessions may set their own.
    #[serde(default = "default_session_start_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub start_timeout_seconds: i32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            default_ttl_seconds: default_session_ttl_seconds(),
            max_ttl_seconds: default_max_session_ttl_seconds(),
            never_used_timeout_seconds: default_never_used_timeout_seconds(),
            start_timeout_seconds: default_session_start_timeout_seconds(),
        }
    }
}

/// Browser profiles kept on the instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfilePolicy {
    /// Let sessions ask for a named profile that outlives them (cookies, logins)
    /// and is reused by later sessions with the same name. When off, every
    /// session gets a fresh temporary profile that is deleted at its end.
    #[serde(default)]
    pub allow_persistent: bool,
    /// A persistent profile unused for this long is deleted; a profile in use is
    /// never touched.
    #[serde(default = "default_profile_max_age_seconds")]
    #[schemars(range(min = 3600, max = 31536000))]
    pub max_age_seconds: i32,
}

impl Default for ProfilePolicy {
    fn default() -> Self {
        Self {
            allow_persistent: false,
            max_age_seconds: default_profile_max_age_seconds(),
        }
    }
}

/// Windows auto-logon for an interactive desktop session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowsAutoLogon {
    /// Local Windows user to log on.
    #[schemars(length(min = 1, max = 104))]
    pub user_name: String,
    /// Name of the SSM SecureString parameter holding the user's password. The
    /// password itself never appears in user data, status or logs.
    #[schemars(length(max = 2048), pattern(patterns::SSM_PARAMETER_NAME))]
    pub password_parameter: String,
}

/// Observed state of a fleet, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrowserFleetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Instances the operator wants running.
    #[serde(default)]
    pub desired_instances: i32,
    /// Instances that exist and are not terminated.
    #[serde(default)]
    pub current_instances: i32,
    /// Instances whose agent takes sessions.
    #[serde(default)]
    pub ready_instances: i32,
    /// Ready instances whose agent runs the fleet's artifact (0 when the
    /// fleet names none).
    #[serde(default)]
    pub up_to_date_instances: i32,
    /// Instances taking no new sessions before they are terminated.
    #[serde(default)]
    pub draining_instances: i32,
    /// Live browser sessions across the fleet.
    #[serde(default)]
    pub active_sessions: i32,
    /// Session slots on ready instances.
    #[serde(default)]
    pub session_capacity: i32,
    /// Requests waiting in the request queue.
    #[serde(default)]
    pub queue_visible: i32,
    /// Requests received by an agent and not yet answered.
    #[serde(default)]
    pub queue_in_flight: i32,
    /// Instances launched with a spec the fleet no longer has (see
    /// `instances[].disruption`), not yet terminated.
    #[serde(default)]
    pub drifted_instances: i32,
    /// Instances older than `spec.disruption.expireAfter` (and not
    /// drifted), not yet terminated.
    #[serde(default)]
    pub expired_instances: i32,
    /// What instances launched now are tagged `browserfleet.io/launch-hash`
    /// with: a digest of the resolved image and of everything else they are
    /// launched with. An instance whose tag differs has drifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_hash: Option<String>,
    /// Why a drifted or expired instance is not being replaced right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_waiting: Option<ReplacementWaiting>,
    /// The most recent change of the desired size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_decision: Option<ScaleDecision>,
    /// Sequence number of the fleet's latest launch; the next launch takes
    /// the one after. EC2 client tokens derive from the fleet's uid and the
    /// sequence, so a retried launch never doubles.
    #[serde(default)]
    pub launch_sequence: i64,
    /// A launch the operator decided on and has not yet seen complete. It is
    /// written here before EC2 is called; after a restart the operator counts
    /// the instances tagged with its sequence
    /// (`browserfleet.io/launch-sequence`) and launches only what is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_intent: Option<LaunchIntent>,
    /// Instances in a row that never registered within
    /// `scaling.readyTimeoutSeconds`; reset when one registers.
    #[serde(default)]
    pub boot_failures: i32,
    /// No launch before this time: launches back off (capped exponentially)
    /// while instances keep failing to register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_backoff_until: Option<Time>,
    /// The fleet's instances (at most 1000, the largest `maxInstances`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub instances: Vec<InstanceStatus>,
    /// The queues the fleet uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<QueueUrls>,
    /// SSM parameter holding the agent configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config_parameter: Option<String>,
    /// `Ready`, `Scaling` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl BrowserFleet {
    /// What the fleet's status says of `instance`, if it lists it.
    pub fn instance_status(&self, instance: &str) -> Option<&InstanceStatus> {
        self.status
            .as_ref()?
            .instances
            .iter()
            .find(|i| i.instance_id == instance)
    }
}

/// A launch decided and not yet complete.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaunchIntent {
    /// The launch's sequence number.
    #[schemars(range(min = 1))]
    pub sequence: i64,
    /// Instances it launches.
    #[schemars(range(min = 1, max = 1000))]
    pub count: i32,
    /// When it was decided.
    pub decided_at: Time,
}

/// A change of the fleet's desired size and why it was made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDecision {
    /// Desired instances before.
    pub from: i32,
    /// Desired instances after.
    pub to: i32,
    /// The scaling policy's explanation.
    pub reason: String,
    /// When the decision was made.
    pub time: Time,
}

/// Lifecycle of one instance as the operator sees it: the one type for it,
/// in the fleet's status and in the scaling policy's view of the fleet.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InstanceState {
    /// Launched; EC2 has not reported it running yet.
    Pending,
    /// Running; the agent is being installed or has not reported ready.
    Bootstrapping,
    /// The agent takes sessions.
    Ready,
    /// Takes no new sessions; terminated once its sessions end or the drain
    /// timeout passes.
    Draining,
    /// Termination requested.
    Terminating,
}

impl InstanceState {
    /// Launched but not taking sessions yet: capacity on its way.
    pub fn is_booting(self) -> bool {
        matches!(self, Self::Pending | Self::Bootstrapping)
    }

    /// Counts towards the fleet's size: booting or ready, not on its way out.
    pub fn is_capacity(self) -> bool {
        matches!(self, Self::Pending | Self::Bootstrapping | Self::Ready)
    }
}

/// One instance of the fleet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// EC2 instance id.
    pub instance_id: String,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Subnet the instance runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// Private IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// When EC2 launched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_time: Option<Time>,
    /// Live sessions on it.
    #[serde(default)]
    pub sessions: i32,
    /// Version its agent reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Where its agent listens (`host:port`), as the agent announced it on
    /// the fleet's events queue; the operator dials only this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Last time its agent answered (to within a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// When it started draining; it is terminated at
    /// `scaling.drainTimeoutSeconds` after this at the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_since: Option<Time>,
    /// SHA-256 of its agent's executable, as the agent reports it (when
    /// the fleet names an artifact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_artifact_sha256: Option<String>,
    /// The SSM command that installs or upgrades its agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapStatus>,
    /// Why it is to be replaced, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<DisruptionReason>,
    /// The instance it was launched to replace; it stands in for that one
    /// until that one is drained (cleared once that one is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// The notice EC2 gave about its end, as its agent reported it: it
    /// takes no new sessions from then (`Draining`), so the fleet launches
    /// what its demand needs; a spot-interrupted instance no longer counts
    /// against `maxInstances`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption: Option<InstanceInterruption>,
}

/// A notice EC2 gave about an instance's end.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInterruption {
    /// Which notice.
    pub kind: InterruptionKind,
    /// What EC2 does at `time` (`terminate`, `stop`, `hibernate`), for a
    /// spot interruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// When EC2 acts (a spot interruption) or when it made the
    /// recommendation (a rebalance).
    pub time: Time,
}

impl InstanceStatus {
    /// Whether EC2 takes the instance back: its agent reported a spot
    /// interruption notice.
    pub fn reclaimed(&self) -> bool {
        self.interruption
            .as_ref()
            .is_some_and(|i| i.kind == InterruptionKind::SpotInterruption)
    }
}

impl From<&crate::protocol::InterruptionNotice> for InstanceInterruption {
    /// A notice as its agent reported it, as status shows it.
    fn from(notice: &crate::protocol::InterruptionNotice) -> Self {
        use crate::protocol::InterruptionKind as Wire;
        InstanceInterruption {
            kind: match notice.kind {
                Wire::SpotInterruption => InterruptionKind::SpotInterruption,
                Wire::RebalanceRecommendation => InterruptionKind::RebalanceRecommendation,
            },
            action: notice.action.clone(),
            time: Time(notice.time),
        }
    }
}

/// The kinds of [`InstanceInterruption`] (those of
/// `protocol::InterruptionKind`, spelt as the API spells enums).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InterruptionKind {
    /// EC2 takes the spot instance back at the notice's time, about two
    /// minutes after the notice; its sessions end then as `Interrupted`.
    SpotInterruption,
    /// EC2 recommends moving off the spot instance, which is at elevated
    /// risk of interruption; it is drained like one the fleet no longer
    /// needs, and its sessions run to their end.
    RebalanceRecommendation,
}

/// Outcome of an SSM Run Command invocation on one instance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CommandState {
    /// Sent, not yet started.
    Pending,
    /// Running.
    InProgress,
    /// Finished successfully.
    Success,
    /// Finished with an error.
    Failed,
    /// Did not finish in time.
    TimedOut,
    /// Cancelled.
    Cancelled,
}

/// The SSM command that installs or upgrades an instance's agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapStatus {
    /// SSM command id.
    pub command_id: String,
    /// SHA-256 of the artifact it installs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_sha256: Option<String>,
    /// Its state on this instance.
    pub state: CommandState,
    /// A short excerpt of its output when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it was sent: an upgrade that succeeded counts as failed if the
    /// agent does not report the artifact within five minutes of this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Time>,
}

/// The queues the fleet uses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueUrls {
    /// Where session requests arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<String>,
    /// Where requests go after `maxReceiveCount` failed receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// Where agents send replies for BrowserSessions and forwarded deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_root_volume_gib() -> i32 {
    50
}
fn default_sessions_per_instance() -> i32 {
    4
}
fn default_scale_down_stabilization_seconds() -> i32 {
    180
}
fn default_max_launches_per_minute() -> i32 {
    30
}
fn default_idle_timeout_seconds() -> i32 {
    60
}
fn default_drain_timeout_seconds() -> i32 {
    3600
}
fn default_ready_timeout_seconds() -> i32 {
    1200
}
fn default_visibility_timeout_seconds() -> i32 {
    60
}
fn default_max_receive_count() -> i32 {
    5
}
fn default_message_retention_seconds() -> i32 {
    345600
}
fn default_gateway_port() -> i32 {
    9900
}
fn default_session_ttl_seconds() -> i32 {
    1800
}
fn default_max_session_ttl_seconds() -> i32 {
    14400
}
fn default_never_used_timeout_seconds() -> i32 {
    300
}
fn default_session_start_timeout_seconds() -> i32 {
    // Long enough for a Windows instance to boot from zero.
    600
}
fn default_profile_max_age_seconds() -> i32 {
    604800
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use proptest::prelude::*;

    use super::*;

    fn valid_spec() -> BrowserFleetSpec {
        BrowserFleetSpec {
            instance: InstanceSpec {
                platform: Platform::Windows,
                image: ImageSource {
                    image_id: Some("ami-0abc1234def567890".into()),
                    ssm_parameter: None,
                },
                instance_types: vec!["m6i.xlarge".into()],
                subnet_ids: vec!["subnet-0abc1234def567890".into()],
                security_group_ids: vec!["sg-0abc1234def567890".into()],
                instance_profile: "browserfleet-node".into(),
                key_name: None,
                root_volume: RootVolumeSpec::default(),
                tags: BTreeMap::from([("team".into(), "qa".into())]),
                user_data_append: None,
                associate_public_ip: false,
                capacity_type: CapacityType::OnDemand,
            },
            capacity: CapacitySpec {
                min_instances: 1,
                max_instances: 5,
                sessions_per_instance: 4,
                warm_instances: 1,
            },
            scaling: ScalingSpec::default(),
            queue: QueueSpec::default(),
            agent: AgentSpec::default(),
            disruption: DisruptionSpec::default(),
            paused: false,
        }
    }

    fn broken_by(rule: &CrossFieldRule, spec: &BrowserFleetSpec) -> bool {
        let violations = spec.validate().expect_err("spec should be invalid");
        violations.as_slice().len() == 1
            && violations.as_slice()[0].message == rule.message
            && violations.as_slice()[0].field == format!("spec{}", rule.field_path)
    }

    #[test]
    fn valid_spec_has_no_violations() {
        assert_eq!(valid_spec().validate(), Ok(()));
    }

    #[test]
    fn min_above_max_is_a_violation() {
        let mut spec = valid_spec();
        spec.capacity.min_instances = 6;
        assert!(broken_by(&rules::MIN_WITHIN_MAX, &spec));
    }

    #[test]
    fn min_equal_to_max_is_allowed() {
        let mut spec = valid_spec();
        spec.capacity.min_instances = 5;
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn warm_above_max_is_a_violation() {
        let mut spec = valid_spec();
        spec.capacity.warm_instances = 6;
        assert!(broken_by(&rules::WARM_WITHIN_MAX, &spec));
    }

    #[test]
    fn no_image_source_is_a_violation() {
        let mut spec = valid_spec();
        spec.instance.image.image_id = None;
        assert!(broken_by(&rules::ONE_IMAGE_SOURCE, &spec));
    }

    #[test]
    fn two_image_sources_are_a_violation() {
        let mut spec = valid_spec();
        spec.instance.image.ssm_parameter = Some("/aws/service/ami".into());
        assert!(broken_by(&rules::ONE_IMAGE_SOURCE, &spec));
    }

    #[test]
    fn kms_key_on_unencrypted_volume_is_a_violation() {
        let mut spec = valid_spec();
        spec.instance.root_volume.encrypted = false;
        spec.instance.root_volume.kms_key_id = Some("alias/browserfleet".into());
        assert!(broken_by(&rules::KMS_KEY_NEEDS_ENCRYPTION, &spec));
    }

    #[test]
    fn unencrypted_volume_without_kms_key_is_allowed() {
        let mut spec = valid_spec();
        spec.instance.root_volume.encrypted = false;
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn reserved_or_overlong_tag_keys_are_violations() {
        for key in [
            "browserfleet.io/fleet",
            "aws:cloudformation:stack-name",
            "",
            &"k".repeat(129),
        ] {
            let mut spec = valid_spec();
            spec.instance.tags.insert(key.to_owned(), "x".into());
            assert!(
                broken_by(&rules::USER_TAGS_NOT_RESERVED, &spec),
                "key {key:?}"
            );
        }
    }

    #[test]
    fn reversed_port_range_is_one_violation() {
        let mut spec = valid_spec();
        spec.agent.browser_port_range = PortRange {
            start: 9400,
            end: 9300,
        };
        assert!(broken_by(&rules::PORT_RANGE_ORDERED, &spec));
    }

    #[test]
    fn port_range_smaller_than_sessions_is_a_violation() {
        let mut spec = valid_spec();
        spec.agent.browser_port_range = PortRange {
            start: 9300,
            end: 9302,
        };
        assert!(broken_by(&rules::PORT_RANGE_FITS_SESSIONS, &spec));
        spec.agent.browser_port_range.end = 9303;
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn gateway_inside_port_range_is_a_violation() {
        for port in [9300, 9350, 9399] {
            let mut spec = valid_spec();
            spec.agent.gateway_port = port;
            assert!(
                broken_by(&rules::GATEWAY_OUTSIDE_PORT_RANGE, &spec),
                "port {port}"
            );
        }
    }

    #[test]
    fn default_ttl_above_max_is_a_violation() {
        let mut spec = valid_spec();
        spec.agent.sessions.default_ttl_seconds = spec.agent.sessions.max_ttl_seconds + 1;
        assert!(broken_by(&rules::DEFAULT_TTL_WITHIN_MAX, &spec));
    }

    #[test]
    fn executable_and_launcher_together_are_a_violation() {
        let mut spec = valid_spec();
        spec.agent.browser.executable = Some("/usr/bin/chromium".into());
        spec.agent.browser.launcher_command = Some(vec!["/opt/launch".into()]);
        assert!(broken_by(&rules::ONE_LAUNCH_METHOD, &spec));
    }

    #[test]
    fn reply_defaults_the_agent_refuses_are_violations_and_agree_with_the_patterns() {
        let queue = regex::Regex::new(patterns::REPLY_QUEUE_URL).expect("pattern");
        let callback = regex::Regex::new(patterns::CALLBACK_URL).expect("pattern");
        let good_queue = "https://sqs.eu-west-1.amazonaws.com/123456789012/replies";
        let good_callback = "https://hooks.example.com:8443/browser?team=a";
        assert!(queue.is_match(good_queue) && callback.is_match(good_callback));
        let mut spec = valid_spec();
        spec.agent.replies.default_reply_to = Some(good_queue.into());
        spec.agent.replies.default_callback_url = Some(good_callback.into());
        assert_eq!(spec.validate(), Ok(()));
        // Refused by the pattern and by the agent's own check alike.
        for bad in [
            "https://user:pw@sqs.eu-west-1.amazonaws.com/123456789012/replies",
            "https://sqs.eu-west-1.amazonaws.com/12345/replies",
            "ftp://sqs.eu-west-1.amazonaws.com/123456789012/replies",
        ] {
            assert!(!queue.is_match(bad), "{bad}");
            assert!(crate::protocol::ReplyQueueUrl::new(bad).is_err(), "{bad}");
        }
        // A port the pattern lets through is caught by validate().
        spec.agent.replies.default_reply_to =
            Some("http://127.0.0.1:99999/123456789012/replies".into());
        spec.agent.replies.default_callback_url = Some("http://hooks:0/x".into());
        assert!(queue.is_match(spec.agent.replies.default_reply_to.as_deref().unwrap()));
        let fields: Vec<String> = spec
            .validate()
            .expect_err("bad ports")
            .as_slice()
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.agent.replies.defaultReplyTo",
                "spec.agent.replies.defaultCallbackUrl"
            ]
        );
    }

    #[test]
    fn allowing_devtools_or_profile_switches_is_a_violation() {
        for arg in [
            "--remote-debugging-port=1",
            "--remote-debugging-address",
            "--user-data-dir=/",
        ] {
            let mut spec = valid_spec();
            spec.agent.browser.allowed_args = vec![arg.into()];
            assert!(
                broken_by(&rules::ALLOWED_ARGS_NOT_RESERVED, &spec),
                "arg {arg}"
            );
        }
    }

    #[test]
    fn auto_logon_on_linux_is_a_violation() {
        let mut spec = valid_spec();
        spec.instance.platform = Platform::Linux;
        spec.agent.windows_auto_logon = Some(WindowsAutoLogon {
            user_name: "browser".into(),
            password_parameter: "/browserfleet/password".into(),
        });
        assert!(broken_by(&rules::AUTO_LOGON_ONLY_ON_WINDOWS, &spec));
    }

    #[test]
    fn headful_windows_without_auto_logon_is_a_violation() {
        let mut spec = valid_spec();
        spec.agent.browser.headless = false;
        assert!(broken_by(&rules::HEADFUL_WINDOWS_NEEDS_AUTO_LOGON, &spec));
        spec.instance.platform = Platform::Linux;
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn a_budget_or_lifetime_the_patterns_refuse_is_a_violation() {
        let mut spec = valid_spec();
        spec.disruption.budget = "150%".into();
        spec.disruption.expire_after = Some("1d12h".into());
        let fields: Vec<String> = spec
            .validate()
            .expect_err("refused")
            .as_slice()
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(
            fields,
            ["spec.disruption.budget", "spec.disruption.expireAfter"]
        );
        spec.disruption.budget = "2".into();
        spec.disruption.expire_after = Some("36h".into());
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let mut spec = valid_spec();
        spec.capacity.min_instances = 9;
        spec.capacity.warm_instances = 9;
        spec.instance.image.image_id = None;
        spec.agent.gateway_port = 9300;
        let violations = spec.validate().expect_err("invalid");
        assert_eq!(
            violations.messages(),
            vec![
                rules::MIN_WITHIN_MAX.message,
                rules::WARM_WITHIN_MAX.message,
                rules::ONE_IMAGE_SOURCE.message,
                rules::GATEWAY_OUTSIDE_PORT_RANGE.message,
            ]
        );
        assert!(
            violations
                .to_string()
                .contains("spec.capacity.minInstances: ")
        );
    }

    #[test]
    fn crd_carries_exactly_the_rust_rules() {
        let (in_crd, expected) =
            crate::api::validation::spec_rules_in_crd::<BrowserFleet>(&rules::all());
        assert_eq!(in_crd, expected);
    }

    fn cel_messages(
        schema: &kube::core::cel::CompiledSchema,
        spec: &BrowserFleetSpec,
    ) -> Vec<String> {
        let object = serde_json::to_value(BrowserFleet::new("f", spec.clone())).unwrap();
        let mut messages: Vec<String> =
            match kube::core::cel::Validator::new().validate_compiled(schema, &object, None) {
                Ok(()) => Vec::new(),
                Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
            };
        messages.sort();
        messages
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The hand-written checks and the CEL rules kube-apiserver evaluates
        /// reach the same verdict on arbitrary numbers and switches.
        #[test]
        fn validate_agrees_with_the_cel_rules(
            min in 0..12i32, max in 0..12i32, warm in 0..12i32, per in 1..16i32,
            start in 9290..9320i32, end in 9290..9320i32, gateway in 9280..9330i32,
            ttl in 1..20i32, max_ttl in 1..20i32,
            image_id in any::<bool>(), ssm in any::<bool>(),
            encrypted in any::<bool>(), kms in any::<bool>(),
            linux in any::<bool>(), headless in any::<bool>(), logon in any::<bool>(),
            executable in any::<bool>(), launcher in any::<bool>(),
            allowed in prop::sample::select(vec!["--disable-web-security", "--remote-debugging-pipe", "--user-data-dir=x", "--remote-allow-origins", "--single-argument", "--profile-directory-x"]),
            extra in prop::sample::select(vec!["--no-sandbox", "--remote-allow-origins=*", "--profile-directory=p", "--remote-debugging-port=1", "--remote-allow-originsx"]),
            tag in prop::sample::select(vec!["team", "aws:x", "browserfleet.io/x", ""]),
        ) {
            let schema = serde_json::to_value(
                BrowserFleet::crd().spec.versions[0].schema.clone().unwrap().open_api_v3_schema.unwrap(),
            ).unwrap();
            let compiled = kube::core::cel::compile_schema(&schema);
            let mut spec = valid_spec();
            spec.capacity = CapacitySpec { min_instances: min, max_instances: max, sessions_per_instance: per, warm_instances: warm };
            spec.agent.browser_port_range = PortRange { start, end };
            spec.agent.gateway_port = gateway;
            spec.agent.sessions.default_ttl_seconds = ttl;
            spec.agent.sessions.max_ttl_seconds = max_ttl;
            spec.instance.image.image_id = image_id.then(|| "ami-0abc1234def567890".into());
            spec.instance.image.ssm_parameter = ssm.then(|| "/aws/ami".into());
            spec.instance.root_volume.encrypted = encrypted;
            spec.instance.root_volume.kms_key_id = kms.then(|| "alias/k".into());
            spec.instance.platform = if linux { Platform::Linux } else { Platform::Windows };
            spec.agent.browser.headless = headless;
            spec.agent.windows_auto_logon = logon.then(|| WindowsAutoLogon { user_name: "u".into(), password_parameter: "/p".into() });
            spec.agent.browser.executable = executable.then(|| "/usr/bin/chromium".into());
            spec.agent.browser.launcher_command = launcher.then(|| vec!["/opt/launch".into()]);
            spec.agent.browser.allowed_args = vec![allowed.into()];
            spec.agent.browser.extra_args = vec![extra.into()];
            spec.instance.tags = BTreeMap::from([(tag.to_owned(), "v".to_owned())]);

            let mut rust: Vec<String> = spec.validate().err().map(|v| v.messages().into_iter().map(str::to_owned).collect()).unwrap_or_default();
            rust.sort();
            prop_assert_eq!(rust, cel_messages(&compiled, &spec));
        }
    }
}
