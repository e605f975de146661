//! Browser switches: what a fleet's `extraArgs`, `allowedArgs` and
//! `blockedArgs` and a session's `args` may be, defined once for every layer
//! that checks them: the CRD schema ([`SWITCH_PATTERN`]), its CEL rules
//! ([`agent_owned_cel`]), `validate()` and the agent's configuration check
//! ([`sets_agent_owned_switch`]), and the agent's request sanitizer
//! ([`is_agent_owned`]).
//!
//! A manifest writes a switch `--name` or `--name=value`, its name in lower
//! case: Chromium's switches are lower case, and Windows reads names
//! case-insensitively, so an upper-case name would be a different switch on
//! Linux and the same one on Windows. With names in lower case the CEL rules
//! compare names exactly, with no case folding.

use super::validation::CrossFieldRule;

/// What every switch in a manifest looks like: `--name` or `--name=value`,
/// the name lower-case ASCII letters, digits and `-`, starting with a letter
/// or digit.
pub const SWITCH_PATTERN: &str = "^--[a-z0-9][a-z0-9-]*(=.*)?$";

/// Switch name prefixes only the agent sets, in lower case without `--`:
/// where DevTools listens (`--remote-debugging-port`, `-address`, `-pipe`,
/// `-io-pipes`, `-socket-name`, …) and where the profile lives
/// (`--user-data-dir`). A caller who chose these could expose DevTools beyond
/// 127.0.0.1, take it over from the gateway, or read and write another
/// session's profile.
pub const AGENT_OWNED_PREFIXES: [&str; 2] = ["remote-debugging", "user-data-dir"];

/// Switch names only the agent sets, in lower case without `--`.
pub const AGENT_OWNED: [&str; 4] = [
    // Which origins may open the DevTools websocket; the gateway relies on
    // the browser refusing every origin but its own.
    "remote-allow-origins",
    // Picks a profile inside the user data directory; profiles are placed by
    // the agent (named profiles, temporary ones), never by the request.
    "profile-directory",
    // Windows: everything after it on the raw command line becomes one URL
    // argument, which would swallow the switches the agent appends.
    "single-argument",
    // Beats every other proxy switch, the egress proxy's included: a browser
    // with it would leave the egress policy (docs/security.md).
    "no-proxy-server",
];

/// Whether only the agent may set switch `name` (lower case, without `--`).
pub fn is_agent_owned(name: &str) -> bool {
    AGENT_OWNED.contains(&name) || AGENT_OWNED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The name of a switch written `--name` or `--name=value`, as written.
pub fn switch_name(arg: &str) -> Option<&str> {
    let bare = arg.strip_prefix("--")?;
    Some(bare.split_once('=').map_or(bare, |(name, _)| name))
}

/// Whether `arg`, a switch as a manifest writes it, sets a switch only the
/// agent may set: the Rust twin of [`agent_owned_cel`].
pub fn sets_agent_owned_switch(arg: &str) -> bool {
    switch_name(arg).is_some_and(is_agent_owned)
}

/// A CEL expression that holds when the string `var` sets a switch only the
/// agent may set, built from the same lists as [`sets_agent_owned_switch`].
pub fn agent_owned_cel(var: &str) -> String {
    let prefixes = AGENT_OWNED_PREFIXES
        .iter()
        .map(|p| format!("{var}.startsWith('--{p}')"));
    let names = AGENT_OWNED
        .iter()
        .map(|n| format!("{var} == '--{n}' || {var}.startsWith('--{n}=')"));
    format!(
        "({})",
        prefixes.chain(names).collect::<Vec<_>>().join(" || ")
    )
}

/// The cross-field rule that no switch in the list at `list` (a CEL path
/// below the spec, e.g. `agent.browser.extraArgs`) is one the agent sets;
/// its message is `{refusal} a switch the agent sets: …`.
pub fn no_agent_owned_switch_rule(
    list: &str,
    refusal: &str,
    field_path: &'static str,
) -> CrossFieldRule {
    CrossFieldRule::built(
        format!(
            "!has(self.{list}) || self.{list}.all(a, !{})",
            agent_owned_cel("a")
        ),
        format!("{refusal} a switch the agent sets: {}", agent_owned_list()),
        field_path,
    )
}

/// How the agent-owned switches are named in messages.
pub fn agent_owned_list() -> String {
    AGENT_OWNED_PREFIXES
        .iter()
        .map(|p| format!("--{p}*"))
        .chain(AGENT_OWNED.iter().map(|n| format!("--{n}")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_up_to_the_first_equals_sign() {
        assert_eq!(switch_name("--lang=de=x"), Some("lang"));
        assert_eq!(switch_name("--headless"), Some("headless"));
        assert_eq!(switch_name("-x"), None);
    }

    #[test]
    fn agent_owned_switches_are_found_with_or_without_a_value() {
        for arg in [
            "--remote-debugging-port=9222",
            "--remote-debugging-pipe",
            "--user-data-dir=/tmp/x",
            "--remote-allow-origins=*",
            "--profile-directory=Default",
            "--single-argument",
        ] {
            assert!(sets_agent_owned_switch(arg), "{arg}");
        }
        for arg in [
            "--remote-allow-originsx",
            "--profile-directory-x",
            "--lang=--remote-debugging-port",
            "remote-debugging-port",
        ] {
            assert!(!sets_agent_owned_switch(arg), "{arg}");
        }
    }

    #[test]
    fn the_cel_expression_names_every_switch() {
        let cel = agent_owned_cel("a");
        for name in AGENT_OWNED.iter().chain(AGENT_OWNED_PREFIXES.iter()) {
            assert!(cel.contains(&format!("'--{name}")), "{cel}");
        }
        assert_eq!(
            agent_owned_list(),
            "--remote-debugging*, --user-data-dir*, --remote-allow-origins, --profile-directory, --single-argument, --no-proxy-server"
        );
    }
}
