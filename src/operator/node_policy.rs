//! The IAM policy of one fleet's nodes (`browserfleet node-policy`): its
//! own queues and agent configuration parameter, nothing of another fleet.
//! `docs/iam/node-policy.json` is the account-wide form, which lets every
//! node read every fleet's configuration; this one is what a fleet whose
//! sessions may run untrusted code should use (`docs/security.md`).

use serde_json::{Value, json};

use crate::cloud::FleetId;
use crate::cloud::queues::queue_name;
use crate::operator::agent_config::parameter_name;

/// Where the fleet runs and what it uses beyond the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePolicyScope {
    /// The fleet: namespace, name and uid (its queue names carry a uid
    /// prefix).
    pub fleet: FleetId,
    /// The AWS partition, `aws` unless in China or GovCloud.
    pub partition: String,
    /// The region, or `*`.
    pub region: String,
    /// The account, or `*`.
    pub account: String,
    /// A customer managed KMS key encrypting the agent configuration, if
    /// any (the AWS managed `alias/aws/ssm` needs no statement).
    pub kms_key_arn: Option<String>,
}

impl NodePolicyScope {
    fn queue_arn(&self, purpose: &str) -> String {
        format!(
            "arn:{}:sqs:{}:{}:{}",
            self.partition,
            self.region,
            self.account,
            queue_name(&self.fleet, purpose)
        )
    }

    /// The ARN of the fleet's request queue.
    pub fn requests_arn(&self) -> String {
        self.queue_arn("requests")
    }

    /// The ARN of its dead-letter queue.
    pub fn dead_letter_arn(&self) -> String {
        self.queue_arn("requests-dlq")
    }

    /// The ARN of its events queue.
    pub fn events_arn(&self) -> String {
        self.queue_arn("events")
    }

    /// The ARN of its agent configuration parameter.
    pub fn parameter_arn(&self) -> String {
        format!(
            "arn:{}:ssm:{}:{}:parameter{}",
            self.partition,
            self.region,
            self.account,
            parameter_name(self.fleet.namespace(), self.fleet.name())
        )
    }
}

/// The node policy of one fleet:
/// * take requests from its request queue and put copies back on it;
/// * dead-letter to its dead-letter queue, announce on its events queue;
/// * reply to requesters' queues of the same account, except every
///   browserfleet queue (`bf-*`), so a node cannot write on another
///   fleet's queues;
/// * read its own agent configuration (and decrypt it with a customer key,
///   only for that parameter).
pub fn node_policy(scope: &NodePolicyScope) -> Value {
    let all_fleet_queues = format!("arn:{}:sqs:*:*:bf-*", scope.partition);
    let mut statements = vec![
        json!({
            "Sid": "TakeRequests",
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:SendMessage"
            ],
            "Resource": scope.requests_arn(),
        }),
        json!({
            "Sid": "DeadLetterAndAnnounce",
            "Effect": "Allow",
            "Action": "sqs:SendMessage",
            "Resource": [scope.dead_letter_arn(), scope.events_arn()],
        }),
        json!({
            "Sid": "ReplyToRequesters",
            "Effect": "Allow",
            "Action": "sqs:SendMessage",
            "NotResource": all_fleet_queues,
            "Condition": {
                "StringEquals": {"aws:ResourceAccount": "${aws:PrincipalAccount}"}
            },
        }),
        json!({
            "Sid": "ReadTheAgentConfiguration",
            "Effect": "Allow",
            "Action": "ssm:GetParameter",
            "Resource": scope.parameter_arn(),
        }),
    ];
    if let Some(key) = &scope.kms_key_arn {
        statements.push(json!({
            "Sid": "DecryptTheAgentConfiguration",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": key,
            "Condition": {
                "StringEquals": {"kms:EncryptionContext:PARAMETER_ARN": scope.parameter_arn()}
            },
        }));
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// Whether an IAM pattern (`*` any run, `?` one character) matches `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Whether `policy` may allow `action` on `resource`: some Allow statement
/// names the action (or a pattern of it) and covers the resource through
/// `Resource` or `NotResource`. Conditions are ignored, so this is an upper
/// bound: a policy that may not allow something by this test does not.
pub fn may_allow(policy: &Value, action: &str, resource: &str) -> bool {
    policy["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["Effect"] == "Allow")
        .any(|statement| {
            let acts = strings(&statement["Action"])
                .iter()
                .any(|a| glob(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()));
            let covered = match (statement.get("Resource"), statement.get("NotResource")) {
                (Some(resources), _) => strings(resources).iter().any(|r| glob(r, resource)),
                (None, Some(excluded)) => !strings(excluded).iter().any(|r| glob(r, resource)),
                (None, None) => false,
            };
            acts && covered
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(namespace: &str, name: &str, uid: &str) -> NodePolicyScope {
        NodePolicyScope {
            fleet: FleetId::new(namespace, name, uid).unwrap(),
            partition: "aws".into(),
            region: "eu-west-1".into(),
            account: "123456789012".into(),
            kms_key_arn: None,
        }
    }

    /// What an agent of `fleet` calls, as (action, resource).
    fn needs(fleet: &NodePolicyScope) -> Vec<(&'static str, String)> {
        vec![
            ("sqs:ReceiveMessage", fleet.requests_arn()),
            ("sqs:DeleteMessage", fleet.requests_arn()),
            ("sqs:ChangeMessageVisibility", fleet.requests_arn()),
            ("sqs:SendMessage", fleet.requests_arn()),
            ("sqs:SendMessage", fleet.dead_letter_arn()),
            ("sqs:SendMessage", fleet.events_arn()),
            ("ssm:GetParameter", fleet.parameter_arn()),
        ]
    }

    #[test]
    fn iam_patterns_match_like_iam() {
        assert!(glob(
            "arn:aws:sqs:*:*:bf-*",
            "arn:aws:sqs:eu-west-1:1:bf-a-b"
        ));
        assert!(!glob(
            "arn:aws:sqs:*:*:bf-*",
            "arn:aws:sqs:eu-west-1:1:replies"
        ));
        assert!(glob("a?c*", "abcdef") && !glob("a?c", "abcd") && glob("*", ""));
    }

    #[test]
    fn a_fleets_policy_grants_what_its_agents_need_and_nothing_of_another_fleet() {
        let a = scope("team", "web", "0b6c4f1e-3b4a-4e8d-9a1b-000000000001");
        // Same namespace, a name that extends A's: a prefix pattern would
        // take B's queues for A's.
        let b = scope("team", "web-2", "7f00aa11-3b4a-4e8d-9a1b-000000000002");
        let policy_a = node_policy(&a);
        for (action, resource) in needs(&a) {
            assert!(
                may_allow(&policy_a, action, &resource),
                "{action} {resource}"
            );
        }
        let reply_queue = "arn:aws:sqs:eu-west-1:123456789012:producer-replies";
        assert!(may_allow(&policy_a, "sqs:SendMessage", reply_queue));
        for (action, resource) in needs(&b) {
            assert!(
                !may_allow(&policy_a, action, &resource),
                "fleet A's policy allows {action} on fleet B's {resource}"
            );
        }
    }

    #[test]
    fn the_check_catches_a_policy_widened_to_everything_or_to_another_fleet() {
        let a = scope("team", "web", "0b6c4f1e-3b4a-4e8d-9a1b-000000000001");
        let b = scope("team", "web-2", "7f00aa11-3b4a-4e8d-9a1b-000000000002");
        let mut widened = node_policy(&a);
        widened["Statement"][3]["Resource"] = json!("*");
        assert!(may_allow(&widened, "ssm:GetParameter", &b.parameter_arn()));
        let mut other = node_policy(&a);
        other["Statement"][1]["Resource"] = json!([a.dead_letter_arn(), b.events_arn()]);
        assert!(may_allow(&other, "sqs:SendMessage", &b.events_arn()));
    }

    #[test]
    fn a_customer_key_is_decrypted_only_for_the_fleets_parameter() {
        let mut a = scope("team", "web", "0b6c4f1e-3b4a-4e8d-9a1b-000000000001");
        a.kms_key_arn = Some("arn:aws:kms:eu-west-1:123456789012:key/abc".into());
        let policy = node_policy(&a);
        let statement = &policy["Statement"][4];
        assert_eq!(statement["Action"], "kms:Decrypt");
        assert_eq!(
            statement["Condition"]["StringEquals"]["kms:EncryptionContext:PARAMETER_ARN"],
            a.parameter_arn()
        );
    }
}
