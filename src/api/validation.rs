//! Cross-field rules shared by the CRD schema and the operator.
//!
//! Every rule exists twice on purpose: as a CEL expression in the CRD's
//! `x-kubernetes-validations`, so that kube-apiserver refuses a bad manifest at
//! `kubectl apply`, and as Rust in `validate()`, so that the operator can
//! re-check objects written before the rule existed (or against a CRD that was
//! never upgraded) and report every violation in a condition. Both sides take
//! their message and field path from one [`CrossFieldRule`], and a test checks
//! that CEL and Rust agree on every example manifest.

use std::fmt;

use kube::core::Rule;

/// One cross-field rule of a resource spec.
#[derive(Clone, Copy, Debug)]
pub struct CrossFieldRule {
    /// CEL expression evaluated with `self` bound to the spec.
    pub cel: &'static str,
    /// What the user reads when the rule fails, in kubectl and in conditions.
    pub message: &'static str,
    /// Where the error is reported, relative to the spec (a JSON path such as
    /// `.capacity.minInstances`).
    pub field_path: &'static str,
}

impl CrossFieldRule {
    /// A rule whose expression and message are built at run time from
    /// definitions other layers share (for example the agent-owned browser
    /// switches). Each such rule is built once per process, in a `LazyLock`,
    /// so the strings it leaks stay a few hundred bytes.
    pub fn built(cel: String, message: String, field_path: &'static str) -> Self {
        Self {
            cel: Box::leak(cel.into_boxed_str()),
            message: Box::leak(message.into_boxed_str()),
            field_path,
        }
    }

    /// The rule as an `x-kubernetes-validations` entry.
    pub fn to_cel(self) -> Rule {
        Rule::new(self.cel)
            .message(self.message)
            .field_path(self.field_path)
    }
}

/// A rule the spec breaks, with the field it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Path from the object root, e.g. `spec.capacity.minInstances`.
    pub field: String,
    /// Human-readable explanation, identical to the CEL rule's message.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every rule a spec breaks; never empty when returned as an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// Records `rule` as broken unless `holds`.
    pub(crate) fn check(&mut self, rule: &CrossFieldRule, holds: bool) {
        if !holds {
            self.0.push(Violation {
                field: format!("spec{}", rule.field_path),
                message: rule.message.to_owned(),
            });
        }
    }

    /// Records a field whose value the schema's pattern only approximates
    /// and a closer check refused.
    pub(crate) fn refuse(&mut self, field: &str, message: &str) {
        self.0.push(Violation {
            field: field.to_owned(),
            message: message.to_owned(),
        });
    }

    pub(crate) fn into_result(self) -> Result<(), Violations> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// The violations, in rule order.
    pub fn as_slice(&self) -> &[Violation] {
        &self.0
    }

    /// The messages alone, in rule order.
    pub fn messages(&self) -> Vec<&str> {
        self.0.iter().map(|v| v.message.as_str()).collect()
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Violation::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

/// Test support: the `x-kubernetes-validations` a CRD carries on its spec,
/// and what `rules` would put there.
#[cfg(test)]
pub(crate) fn spec_rules_in_crd<K: kube::CustomResourceExt>(
    rules: &[CrossFieldRule],
) -> (serde_json::Value, serde_json::Value) {
    let crd = serde_json::to_value(K::crd()).expect("CRD serializes");
    let in_crd = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["x-kubernetes-validations"]
        .clone();
    let expected = rules
        .iter()
        .map(|r| serde_json::to_value(r.to_cel()).expect("rule serializes"))
        .collect();
    (in_crd, serde_json::Value::Array(expected))
}
