//! The browser arguments a session request may pass, and the ones it may not.
//!
//! A request's `args` reach the browser's command line, next to the switches
//! the agent sets itself (DevTools port and address, profile directory). A
//! requester already controls its own browser through DevTools; what the
//! sanitizer guards is everything around it: the node, the fleet's network,
//! other sessions, and the agent's own wiring.
//!
//! # How Chromium reads its command line
//!
//! (`base/command_line.cc`) Each argument is trimmed of whitespace; `--`, `-`
//! and, on Windows, `/` start a switch; the name runs to the first `=`; on
//! Windows names are lower-cased, so `--User-Data-Dir` is `--user-data-dir`
//! there; a bare `--` ends switch parsing, turning every later argument,
//! switches included, into a URL to open; anything else is a URL or file to
//! open. When a switch repeats, the last value wins.
//!
//! # Rules
//!
//! So an argument is accepted only if it is exactly `--name` or
//! `--name=value`: it starts with `--` (no whitespace in front, no `-name` or
//! `/name` spelling, no positional argument, no bare `--`), the name is ASCII
//! letters, digits and `-` starting with a letter or digit, and nothing in it
//! is a control character. Names are compared in lower case, whatever the
//! platform, and the accepted argument is written back with its name in
//! lower case, so Linux and Windows read it alike. Values are passed through
//! as they are; they may contain spaces and quotes, so a launcher command must
//! pass arguments as an argument vector, never through a shell.
//!
//! Then the name is checked:
//! * [`AGENT_OWNED_PREFIXES`] and [`AGENT_OWNED`] are set by the agent alone
//!   and are refused whatever the fleet says;
//! * names in the fleet's `blockedArgs` ([`ArgPolicy::new`]) are refused;
//! * names in [`DEFAULT_BLOCKED`] are refused unless the fleet's
//!   `allowedArgs` lists them.
//!
//! Feature toggles (`--enable-features`, `--disable-features`,
//! `--enable-blink-features`) are not looked into; a fleet that must pin them
//! blocks the switch itself.
//!
//! # Repeated switches
//!
//! When a request repeats a switch, only its last occurrence is kept, in the
//! position of that occurrence: Chromium would use the last value anyway, and
//! one occurrence per switch keeps the command line easy to read in logs and
//! process lists. The agent appends its own switches after the request's, so
//! on any overlap the agent's value wins.
//!
//! These rules apply to what a request asks for; a fleet's own `extraArgs`
//! (for example `--no-sandbox` for browsers that run as root in a container)
//! are the platform team's choice and are not checked here.

use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

use crate::protocol::request::MAX_ARG_LEN;

pub use crate::api::switches::{AGENT_OWNED, AGENT_OWNED_PREFIXES, is_agent_owned};

/// Switches refused unless the fleet's `allowedArgs` lists them, in lower
/// case without `--`, each with the reason a requester sees.
#[rustfmt::skip]
pub const DEFAULT_BLOCKED: [(&str, &str); 51] = [
    // Run another program: the value is a command line Chromium starts.
    ("renderer-cmd-prefix", "runs a command of the caller's choosing"),
    ("utility-cmd-prefix", "runs a command of the caller's choosing"),
    ("gpu-launcher", "runs a command of the caller's choosing"),
    ("ppapi-plugin-launcher", "runs a command of the caller's choosing"),
    ("plugin-launcher", "runs a command of the caller's choosing"),
    ("zygote-cmd-prefix", "runs a command of the caller's choosing"),
    ("nacl-gdb", "runs a debugger of the caller's choosing"),
    ("nacl-gdb-script", "runs a debugger script of the caller's choosing"),
    ("browser-subprocess-path", "runs a program of the caller's choosing for every child process"),
    // Load code from a path.
    ("register-pepper-plugins", "loads a library from a path of the caller's choosing"),
    ("ppapi-flash-path", "loads a library from a path of the caller's choosing"),
    ("mojo-core-library-path", "loads a library from a path of the caller's choosing"),
    ("allow-third-party-modules", "lets other programs inject code into the browser (Windows)"),
    // Write files where the caller says (and some of them leak secrets).
    ("log-file", "writes a file at a path of the caller's choosing"),
    ("log-net-log", "writes the network log, cookies included, at a path of the caller's choosing"),
    ("ssl-key-log-file", "writes TLS session keys at a path of the caller's choosing"),
    ("disk-cache-dir", "writes the cache at a path of the caller's choosing"),
    ("crash-dumps-dir", "writes crash dumps at a path of the caller's choosing"),
    ("trace-startup-file", "writes a trace at a path of the caller's choosing"),
    ("enable-tracing-output", "writes a trace at a path of the caller's choosing"),
    ("webrtc-event-logging", "writes WebRTC logs at a path of the caller's choosing"),
    ("print-to-pdf", "writes a PDF at a path of the caller's choosing"),
    ("screenshot", "writes a screenshot at a path of the caller's choosing"),
    ("pack-extension", "writes a packed extension and key next to a directory of the caller's choosing"),
    ("pack-extension-key", "reads a private key from a path of the caller's choosing"),
    // Weaken the sandbox or process isolation.
    ("no-sandbox", "turns off the browser sandbox"),
    ("disable-setuid-sandbox", "turns off the browser sandbox"),
    ("disable-namespace-sandbox", "turns off the browser sandbox"),
    ("disable-seccomp-filter-sandbox", "turns off the browser sandbox"),
    ("disable-gpu-sandbox", "turns off the GPU process sandbox"),
    ("no-zygote-sandbox", "turns off the browser sandbox"),
    ("allow-sandbox-debugging", "weakens the browser sandbox"),
    ("single-process", "runs web pages inside the unsandboxed browser process"),
    ("disable-kill-after-bad-ipc", "keeps a renderer alive after it sent a malicious message"),
    ("disable-site-isolation-trials", "turns off site isolation between web pages"),
    ("type", "starts the browser as one of its own internal child processes"),
    // Take down the web's own walls. With same-origin checks off, any page
    // can read the responses of services on the node's network, the
    // instance metadata service included.
    ("disable-web-security", "turns off the same-origin policy for every page"),
    ("allow-running-insecure-content", "lets HTTPS pages run scripts loaded over plain HTTP"),
    ("allow-file-access-from-files", "lets file:// pages read other local files"),
    // Go around the request's own fields, which are checked.
    ("load-extension", "loads extensions from any path; use the request's extensions field"),
    ("disable-extensions-except", "loads extensions from any path; use the request's extensions field"),
    ("extensions-on-chrome-urls", "lets extensions script the browser's own pages"),
    ("proxy-server", "sets the proxy around the fleet's rules; use the request's proxy field"),
    ("proxy-pac-url", "runs a proxy script from any URL or file; use the request's proxy field"),
    ("proxy-bypass-list", "sets the proxy around the fleet's rules; use the request's proxy field"),
    ("proxy-auto-detect", "uses whatever proxy the network announces; use the request's proxy field"),
    ("app", "opens a URL, files included, that the start URL rules never see"),
    ("custom-devtools-frontend", "loads the privileged DevTools front-end from any URL or file"),
    // Change the machine rather than the session (Windows).
    ("uninstall", "starts uninstalling the browser"),
    ("make-default-browser", "changes the user's default browser"),
    // V8 flags include --logfile (write anywhere) and
    // --allow-natives-syntax (internal functions that corrupt memory).
    ("js-flags", "passes flags to the JavaScript engine, some of which write files"),
];

/// Which switches a fleet adds to, or takes off, the built-in blocklist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArgPolicy {
    allowed: BTreeSet<String>,
    blocked: BTreeSet<String>,
}

/// A fleet's `allowedArgs` or `blockedArgs` entry that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ArgPolicyError {
    /// The entry is not `--name`, `--name=value` or `name`.
    #[error("{entry:?} is not a browser switch (--name)")]
    NotASwitch {
        /// The entry as configured.
        entry: String,
    },
    /// `allowedArgs` names a switch only the agent may set.
    #[error("{entry:?} is set by the agent and can never be allowed")]
    AgentOwned {
        /// The entry as configured.
        entry: String,
    },
}

impl ArgPolicy {
    /// The policy of a fleet, from its `allowedArgs` and `blockedArgs`. This
    /// function takes each entry written `--name`, `--name=value` or `name`,
    /// in any case; a value is ignored (a switch matches with or without
    /// one). A switch both allowed and blocked is blocked. (A fleet's
    /// configuration is stricter, `AgentConfig::validate`: `--name` or
    /// `--name=value` in lower case, as the CRD requires.)
    pub fn new<A, B>(allowed: A, blocked: B) -> Result<ArgPolicy, ArgPolicyError>
    where
        A: IntoIterator,
        A::Item: AsRef<str>,
        B: IntoIterator,
        B::Item: AsRef<str>,
    {
        let mut policy = ArgPolicy::default();
        for entry in allowed {
            let entry = entry.as_ref();
            let name = policy_name(entry)?;
            if is_agent_owned(&name) {
                return Err(ArgPolicyError::AgentOwned {
                    entry: entry.to_owned(),
                });
            }
            policy.allowed.insert(name);
        }
        for entry in blocked {
            policy.blocked.insert(policy_name(entry.as_ref())?);
        }
        Ok(policy)
    }

    /// Switch names (lower case, without `--`) the fleet takes off the
    /// built-in blocklist.
    pub fn allowed(&self) -> impl Iterator<Item = &str> {
        self.allowed.iter().map(String::as_str)
    }

    /// Switch names (lower case, without `--`) the fleet blocks on top of the
    /// built-in blocklist.
    pub fn blocked(&self) -> impl Iterator<Item = &str> {
        self.blocked.iter().map(String::as_str)
    }
}

fn policy_name(entry: &str) -> Result<String, ArgPolicyError> {
    let bare = entry.strip_prefix("--").unwrap_or(entry);
    let name = bare.split_once('=').map_or(bare, |(name, _)| name);
    if is_switch_name(name) {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(ArgPolicyError::NotASwitch {
            entry: entry.to_owned(),
        })
    }
}

/// Why switch `name` (lower case, without `--`) is on the built-in
/// blocklist, if it is.
pub fn default_block_reason(name: &str) -> Option<&'static str> {
    DEFAULT_BLOCKED
        .iter()
        .find(|(blocked, _)| *blocked == name)
        .map(|(_, why)| *why)
}

/// One requested argument that was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgViolation {
    /// Position in the request's arguments.
    pub index: usize,
    /// The argument as requested.
    pub arg: String,
    /// What is wrong with it.
    pub reason: ArgViolationReason,
}

/// Why an argument was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgViolationReason {
    /// Longer than [`MAX_ARG_LEN`] bytes.
    TooLong,
    /// Contains a control character (NUL, newline, …).
    ControlCharacter,
    /// Does not start with `--`, or is a bare `--`.
    NotASwitch,
    /// The switch name is not ASCII letters, digits and `-`.
    InvalidName,
    /// The agent sets this switch itself.
    AgentOwned,
    /// On the built-in blocklist, and the fleet does not allow it.
    Blocked {
        /// What the switch would do.
        why: &'static str,
    },
    /// On the fleet's own blocklist.
    BlockedByFleet,
}

impl fmt::Display for ArgViolationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgViolationReason::TooLong => write!(f, "longer than {MAX_ARG_LEN} bytes"),
            ArgViolationReason::ControlCharacter => f.write_str("contains a control character"),
            ArgViolationReason::NotASwitch => f.write_str(
                "not a --switch; the browser would open a positional argument as a URL or file",
            ),
            ArgViolationReason::InvalidName => {
                f.write_str("switch names are ASCII letters, digits and -")
            }
            ArgViolationReason::AgentOwned => {
                f.write_str("chosen by the agent; not allowed in a request")
            }
            ArgViolationReason::Blocked { why } => {
                write!(f, "{why}; not allowed unless the fleet allows it")
            }
            ArgViolationReason::BlockedByFleet => f.write_str("blocked by the fleet"),
        }
    }
}

impl fmt::Display for ArgViolation {
    /// `args[2] "--user-data-dir=/tmp": chosen by the agent; not allowed in a
    /// request`, with long arguments cut to 80 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = crate::protocol::error::excerpt(&self.arg, 80);
        write!(f, "args[{}] {shown:?}: {}", self.index, self.reason)
    }
}

/// Checks the arguments a request asks for against the rules in the
/// [module docs](self) and the fleet's `policy`. Returns the arguments to pass
/// (names in lower case, each switch once) or every violation, in order.
pub fn sanitize(
    requested: &[String],
    policy: &ArgPolicy,
) -> Result<Vec<String>, Vec<ArgViolation>> {
    let mut violations = Vec::new();
    let mut accepted = Vec::with_capacity(requested.len());
    for (index, arg) in requested.iter().enumerate() {
        match check(arg, policy) {
            Ok(switch) => accepted.push(switch),
            Err(reason) => violations.push(ArgViolation {
                index,
                arg: arg.clone(),
                reason,
            }),
        }
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    // Keep the last occurrence of each switch, where it stands.
    let mut seen = BTreeSet::new();
    let mut kept = Vec::with_capacity(accepted.len());
    for (name, arg) in accepted.into_iter().rev() {
        if seen.insert(name) {
            kept.push(arg);
        }
    }
    kept.reverse();
    Ok(kept)
}

/// The switch name (lower case) and the argument to pass, or why not.
fn check(arg: &str, policy: &ArgPolicy) -> Result<(String, String), ArgViolationReason> {
    if arg.len() > MAX_ARG_LEN {
        return Err(ArgViolationReason::TooLong);
    }
    if arg.chars().any(char::is_control) {
        return Err(ArgViolationReason::ControlCharacter);
    }
    let Some(body) = arg.strip_prefix("--") else {
        return Err(ArgViolationReason::NotASwitch);
    };
    let (name, value) = match body.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (body, None),
    };
    if body.is_empty() {
        // A bare `--` would make every later argument a URL.
        return Err(ArgViolationReason::NotASwitch);
    }
    if !is_switch_name(name) {
        return Err(ArgViolationReason::InvalidName);
    }
    let name = name.to_ascii_lowercase();
    if is_agent_owned(&name) {
        return Err(ArgViolationReason::AgentOwned);
    }
    if policy.blocked.contains(&name) {
        return Err(ArgViolationReason::BlockedByFleet);
    }
    if let Some(why) = default_block_reason(&name)
        && !policy.allowed.contains(&name)
    {
        return Err(ArgViolationReason::Blocked { why });
    }
    let arg = match value {
        Some(value) => format!("--{name}={value}"),
        None => format!("--{name}"),
    };
    Ok((name, arg))
}

/// ASCII letters, digits and `-`, starting with a letter or digit.
fn is_switch_name(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn reasons(list: &[&str], policy: &ArgPolicy) -> Vec<(usize, ArgViolationReason)> {
        match sanitize(&args(list), policy) {
            Ok(accepted) => panic!("accepted {accepted:?}"),
            Err(violations) => violations
                .into_iter()
                .map(|v| (v.index, v.reason))
                .collect(),
        }
    }

    fn reason(arg: &str) -> ArgViolationReason {
        match reasons(&[arg], &ArgPolicy::default()).as_slice() {
            [(0, reason)] => *reason,
            other => panic!("{arg:?}: {other:?}"),
        }
    }

    #[test]
    fn ordinary_switches_pass_unchanged() {
        let requested = args(&[
            "--lang=de-DE",
            "--window-size=1280,800",
            "--user-agent=Mozilla/5.0 (X11; Linux x86_64) \"quoted\"",
            "--disable-gpu",
            "--enable-features=NetworkService,Foo",
            "--force-device-scale-factor=1",
            "--headless=new",
        ]);
        assert_eq!(sanitize(&requested, &ArgPolicy::default()), Ok(requested));
        assert_eq!(sanitize(&[], &ArgPolicy::default()), Ok(Vec::new()));
    }

    #[test]
    fn positional_arguments_and_other_prefixes_are_not_switches() {
        for arg in [
            "https://example.com",
            "/etc/passwd",
            "file:///etc/passwd",
            "-remote-debugging-port=9222",
            "/remote-debugging-port=9222",
            "-no-sandbox",
            " --remote-debugging-port=9222",
            "\u{a0}--no-sandbox",
            "\u{2014}no-sandbox",
            "--",
            "",
            "remote-debugging-port",
        ] {
            assert_eq!(reason(arg), ArgViolationReason::NotASwitch, "{arg:?}");
        }
    }

    #[test]
    fn names_must_be_ascii_letters_digits_and_dashes() {
        for arg in [
            "--=x",
            "---remote-debugging-port=1",
            "--no_sandbox",
            "--no-sandbox ",
            "--no-sandbox\u{a0}",
            "--remote-debugging-port =1",
            "--lang\u{2010}x",
            "--ﬁle",
            "--a b",
        ] {
            assert_eq!(reason(arg), ArgViolationReason::InvalidName, "{arg:?}");
        }
    }

    #[test]
    fn control_characters_and_overlong_arguments_are_refused() {
        for arg in [
            "--lang=de\0",
            "--lang=de\n--no-sandbox",
            "--a=\u{1b}[31m",
            "--a=\u{85}",
            "--a=\u{7f}",
        ] {
            assert_eq!(reason(arg), ArgViolationReason::ControlCharacter, "{arg:?}");
        }
        let longest = format!("--a={}", "x".repeat(MAX_ARG_LEN - 4));
        assert!(sanitize(std::slice::from_ref(&longest), &ArgPolicy::default()).is_ok());
        assert_eq!(reason(&format!("{longest}x")), ArgViolationReason::TooLong);
    }

    #[test]
    fn agent_owned_switches_are_refused_in_every_case_and_with_any_value() {
        for arg in [
            "--remote-debugging-port=9222",
            "--remote-debugging-port",
            "--REMOTE-DEBUGGING-PORT=9222",
            "--Remote-Debugging-Address=0.0.0.0",
            "--remote-debugging-pipe",
            "--remote-debugging-io-pipes=3,4",
            "--remote-debugging-socket-name=x",
            "--remote-allow-origins=*",
            "--user-data-dir=/tmp/other",
            "--USER-DATA-DIR",
            "--profile-directory=Profile 1",
            "--single-argument",
        ] {
            assert_eq!(reason(arg), ArgViolationReason::AgentOwned, "{arg:?}");
        }
    }

    #[test]
    fn built_in_blocklist_refuses_with_its_reason() {
        for (name, why) in DEFAULT_BLOCKED {
            for arg in [format!("--{name}"), format!("--{}=x", name.to_uppercase())] {
                assert_eq!(reason(&arg), ArgViolationReason::Blocked { why }, "{arg}");
            }
        }
    }

    #[test]
    fn blocklists_hold_lower_case_switch_names_without_repeats() {
        let mut all = BTreeSet::new();
        let names = DEFAULT_BLOCKED
            .iter()
            .map(|(name, _)| *name)
            .chain(AGENT_OWNED)
            .chain(AGENT_OWNED_PREFIXES);
        for name in names {
            assert!(
                is_switch_name(name) && name == name.to_ascii_lowercase(),
                "{name}"
            );
            assert!(all.insert(name), "{name} listed twice");
        }
        for (name, _) in DEFAULT_BLOCKED {
            assert!(!is_agent_owned(name), "{name} is agent-owned already");
        }
    }

    #[test]
    fn a_fleet_may_allow_built_in_blocked_switches() {
        let policy = ArgPolicy::new(["--disable-web-security", "NO-SANDBOX=ignored"], [""; 0])
            .expect("valid policy");
        assert_eq!(
            sanitize(&args(&["--disable-web-security", "--No-Sandbox"]), &policy),
            Ok(args(&["--disable-web-security", "--no-sandbox"]))
        );
        assert_eq!(
            reasons(&["--single-process"], &policy),
            vec![(
                0,
                ArgViolationReason::Blocked {
                    why: "runs web pages inside the unsandboxed browser process"
                }
            )]
        );
    }

    #[test]
    fn a_fleet_can_never_allow_agent_owned_switches() {
        for entry in [
            "--remote-debugging-port",
            "--user-data-dir=/x",
            "Remote-Allow-Origins",
            "--single-argument",
        ] {
            assert_eq!(
                ArgPolicy::new([entry], [""; 0]),
                Err(ArgPolicyError::AgentOwned {
                    entry: entry.to_owned()
                })
            );
        }
    }

    #[test]
    fn a_fleet_may_block_more_switches_and_blocking_beats_allowing() {
        let policy = ArgPolicy::new(
            ["--disable-web-security"],
            ["--incognito", "--Disable-Web-Security=1"],
        )
        .expect("valid policy");
        assert_eq!(
            reasons(
                &["--incognito", "--lang=de", "--disable-web-security"],
                &policy
            ),
            vec![
                (0, ArgViolationReason::BlockedByFleet),
                (2, ArgViolationReason::BlockedByFleet)
            ]
        );
        assert_eq!(
            policy.blocked().collect::<Vec<_>>(),
            ["disable-web-security", "incognito"]
        );
        assert_eq!(
            policy.allowed().collect::<Vec<_>>(),
            ["disable-web-security"]
        );
    }

    #[test]
    fn malformed_policy_entries_are_refused() {
        for entry in ["", "--", "-x", "--a b", "/x", "--=1"] {
            assert_eq!(
                ArgPolicy::new([""; 0], [entry]),
                Err(ArgPolicyError::NotASwitch {
                    entry: entry.to_owned()
                }),
                "{entry:?}"
            );
        }
    }

    #[test]
    fn every_violation_is_reported_with_its_index() {
        assert_eq!(
            reasons(
                &[
                    "--lang=de",
                    "--user-data-dir=/tmp",
                    "https://x",
                    "--no-sandbox",
                    "--ok"
                ],
                &ArgPolicy::default()
            ),
            vec![
                (1, ArgViolationReason::AgentOwned),
                (2, ArgViolationReason::NotASwitch),
                (
                    3,
                    ArgViolationReason::Blocked {
                        why: "turns off the browser sandbox"
                    }
                ),
            ]
        );
    }

    #[test]
    fn the_last_occurrence_of_a_switch_wins_in_its_place() {
        assert_eq!(
            sanitize(
                &args(&[
                    "--lang=de",
                    "--mute-audio",
                    "--LANG=fr",
                    "--window-size=1,1",
                    "--mute-audio"
                ]),
                &ArgPolicy::default()
            ),
            Ok(args(&["--lang=fr", "--window-size=1,1", "--mute-audio"]))
        );
    }

    #[test]
    fn names_are_lower_cased_and_values_kept() {
        assert_eq!(
            sanitize(
                &args(&["--User-Agent=Mixed Case=Value"]),
                &ArgPolicy::default()
            ),
            Ok(args(&["--user-agent=Mixed Case=Value"]))
        );
    }

    #[test]
    fn violations_display_index_argument_and_reason() {
        let violations = sanitize(
            &args(&["--lang=de", "--user-data-dir=/tmp"]),
            &ArgPolicy::default(),
        )
        .expect_err("refused");
        assert_eq!(
            violations[0].to_string(),
            "args[1] \"--user-data-dir=/tmp\": chosen by the agent; not allowed in a request"
        );
        let escaped = sanitize(
            &args(&["--lang=de", "--no-sandbox\n"]),
            &ArgPolicy::default(),
        )
        .expect_err("refused");
        assert_eq!(
            escaped[0].to_string(),
            "args[1] \"--no-sandbox\\n\": contains a control character"
        );
        let cut = ArgViolation {
            index: 0,
            arg: "z".repeat(200),
            reason: ArgViolationReason::NotASwitch,
        }
        .to_string();
        assert!(cut.contains(&format!("{}…", "z".repeat(80))), "{cut}");
    }
}
