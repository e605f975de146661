//! The command line that starts one session's browser: pure, so every flag
//! the agent chooses is tested without starting anything.

use std::path::{Path, PathBuf};

use crate::api::fleet::BrowserSpec;
use crate::protocol::ProxyConfig;

use crate::agent::slots::Port;

/// Flags every browser gets from the agent, before the fleet's and the
/// session's own. They keep a browser on a closed network from spending its
/// start on update checks, sync and first-run UI, none of which a session
/// wants.
const QUIET_FLAGS: &[&str] = &[
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--password-store=basic",
];

/// What to start for one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrowserCommand {
    /// The program (the browser, or the fleet's launcher).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Everything of one session that shapes its command line.
#[derive(Clone, Debug)]
pub struct SessionLaunch<'a> {
    /// The browser's DevTools port (bound to 127.0.0.1).
    pub port: Port,
    /// The session's own profile directory.
    pub profile_dir: &'a Path,
    /// The request's arguments, already sanitized.
    pub session_args: &'a [String],
    /// The request's proxy.
    pub proxy: Option<&'a ProxyConfig>,
    /// Unpacked extensions to load, by name in the extensions directory.
    pub extensions: &'a [String],
    /// Where the extensions are.
    pub extensions_dir: &'a Path,
    /// First page to open.
    pub start_url: Option<&'a str>,
    /// Port of the agent's egress proxy on 127.0.0.1, when the agent runs
    /// one (always, outside of unit tests of other flags).
    pub egress_proxy: Option<u16>,
}

/// Builds the command line of a session's browser.
///
/// Order: the agent's DevTools and profile flags, the quiet flags, headless,
/// the fleet's `extraArgs`, then the session's. The DevTools flags come from
/// the agent only (the sanitizer refuses them in a request), so a session
/// cannot move DevTools off 127.0.0.1 or onto another session's profile.
/// A launcher command gets the same arguments appended to its own.
pub fn browser_command(
    browser: &BrowserSpec,
    executable: &Path,
    session: &SessionLaunch<'_>,
) -> BrowserCommand {
    let mut args = Vec::new();
    let program = match &browser.launcher_command {
        Some(command) if !command.is_empty() => {
            args.extend(command[1..].iter().cloned());
            PathBuf::from(&command[0])
        }
        _ => executable.to_path_buf(),
    };
    args.push(format!("--remote-debugging-port={}", session.port));
    args.push("--remote-debugging-address=127.0.0.1".into());
    args.push(format!("--user-data-dir={}", session.profile_dir.display()));
    args.extend(QUIET_FLAGS.iter().map(|f| (*f).to_owned()));
    if browser.headless {
        args.push("--headless=new".into());
    }
    args.extend(browser.extra_args.iter().cloned());
    if let Some(proxy) = session.proxy
        && session.egress_proxy.is_none()
    {
        args.push(format!("--proxy-server={}", proxy.server));
        if let Some(bypass) = &proxy.bypass {
            args.push(format!("--proxy-bypass-list={bypass}"));
        }
    }
    if !session.extensions.is_empty() {
        let paths: Vec<String> = session
            .extensions
            .iter()
            .map(|name| session.extensions_dir.join(name).display().to_string())
            .collect();
        args.push(format!("--load-extension={}", paths.join(",")));
    }
    args.extend(session.session_args.iter().cloned());
    if let Some(port) = session.egress_proxy {
        args.extend(egress_flags(port, session.proxy));
    }
    // The start page goes last, after `--`, so it can never be read as a flag.
    args.push("--".into());
    args.push(session.start_url.unwrap_or("about:blank").to_owned());
    BrowserCommand { program, args }
}

/// The flags that keep a browser's traffic on the egress policy, appended
/// after every other argument so that they win over any earlier proxy
/// switch (`--no-proxy-server`, which would beat them, only the agent sets).
///
/// All traffic goes to the agent's egress proxy, or, for a session with a
/// proxy of its own, to that proxy (whose address the agent checked against
/// the policy). Loopback is proxied too (`<-loopback>` removes Chromium's
/// implicit bypass), and WebRTC may not send UDP outside the proxy.
fn egress_flags(port: u16, own: Option<&ProxyConfig>) -> Vec<String> {
    let server = match own {
        Some(proxy) => proxy.server.clone(),
        None => format!("http://127.0.0.1:{port}"),
    };
    vec![
        format!("--proxy-server={server}"),
        "--proxy-bypass-list=<-loopback>".into(),
        "--force-webrtc-ip-handling-policy=disable_non_proxied_udp".into(),
    ]
}

/// The file that makes a directory an unpacked extension.
const EXTENSION_MANIFEST: &str = "manifest.json";
/// Most installed extensions a refusal lists.
const MAX_LISTED_EXTENSIONS: usize = 20;

/// The requested extensions that `extensions_dir` has no unpacked extension
/// of: no directory of that name holding a `manifest.json`. Chromium given
/// such a path fails to load it (headful, with an error dialog), so the
/// request is refused before anything starts.
pub async fn missing_extensions(extensions_dir: &Path, names: &[String]) -> Vec<String> {
    let mut missing = Vec::new();
    for name in names {
        let manifest = extensions_dir.join(name).join(EXTENSION_MANIFEST);
        let found = tokio::fs::metadata(&manifest)
            .await
            .is_ok_and(|m| m.is_file());
        if !found && !missing.contains(name) {
            missing.push(name.clone());
        }
    }
    missing
}

/// Names of the unpacked extensions in `extensions_dir`, sorted; empty
/// when it cannot be read.
pub async fn installed_extensions(extensions_dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(extensions_dir).await else {
        return names;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let manifest = entry.path().join(EXTENSION_MANIFEST);
        if tokio::fs::metadata(&manifest)
            .await
            .is_ok_and(|m| m.is_file())
        {
            names.push(name);
        }
    }
    names.sort();
    names
}

/// Why a request naming `missing` extensions is refused, saying what is
/// accepted and (at most 20 of) what is installed.
pub fn missing_extensions_message(missing: &[String], installed: &[String]) -> String {
    let installed = match installed.len() {
        0 => "it has none".to_owned(),
        n if n > MAX_LISTED_EXTENSIONS => format!(
            "it has {} and {} more",
            installed[..MAX_LISTED_EXTENSIONS].join(", "),
            n - MAX_LISTED_EXTENSIONS
        ),
        _ => format!("it has {}", installed.join(", ")),
    };
    format!(
        "no unpacked extension {} in this fleet's extensions directory; `extensions` accepts \
         names of the unpacked extensions there (directories holding a manifest.json), or \
         paths whose last component is one (/opt/ext/adblock, C:\\ext\\adblock), and loads \
         only <extensionsDir>/<name>: {installed}",
        missing.join(", ")
    )
}

/// A session token: 256 bits from the OS's random source (two v4 UUIDs give
/// 244 random bits), as 64 hex digits.
pub fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch<'a>(dir: &'a Path, args: &'a [String]) -> SessionLaunch<'a> {
        SessionLaunch {
            port: Port(9301),
            profile_dir: dir,
            session_args: args,
            proxy: None,
            extensions: &[],
            extensions_dir: Path::new("/ext"),
            start_url: None,
            egress_proxy: None,
        }
    }

    #[test]
    fn the_agent_picks_port_address_and_profile_and_the_session_comes_last() {
        let browser = BrowserSpec {
            extra_args: vec!["--no-sandbox".into()],
            ..BrowserSpec::default()
        };
        let session_args = vec!["--window-size=800,600".into()];
        let dir = PathBuf::from("/state/profiles/tmp/s1");
        let command = browser_command(
            &browser,
            Path::new("/usr/bin/chromium"),
            &launch(&dir, &session_args),
        );
        assert_eq!(command.program, PathBuf::from("/usr/bin/chromium"));
        assert_eq!(
            &command.args[..3],
            [
                "--remote-debugging-port=9301",
                "--remote-debugging-address=127.0.0.1",
                "--user-data-dir=/state/profiles/tmp/s1",
            ]
        );
        let position = |a: &str| command.args.iter().position(|x| x == a).unwrap();
        assert!(position("--headless=new") < position("--no-sandbox"));
        assert!(position("--no-sandbox") < position("--window-size=800,600"));
        assert_eq!(
            &command.args[command.args.len() - 2..],
            ["--", "about:blank"]
        );
    }

    #[test]
    fn a_launcher_command_gets_the_same_arguments_after_its_own() {
        let browser = BrowserSpec {
            launcher_command: Some(vec!["/opt/launch.sh".into(), "--fast".into()]),
            headless: false,
            ..BrowserSpec::default()
        };
        let dir = PathBuf::from("/p");
        let command = browser_command(&browser, Path::new("/unused"), &launch(&dir, &[]));
        assert_eq!(command.program, PathBuf::from("/opt/launch.sh"));
        assert_eq!(command.args[0], "--fast");
        assert_eq!(command.args[1], "--remote-debugging-port=9301");
        assert!(!command.args.iter().any(|a| a.starts_with("--headless")));
    }

    fn unpacked(dir: &Path, name: &str) {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("manifest.json"), "{}").unwrap();
    }

    #[tokio::test]
    async fn only_directories_holding_a_manifest_count_as_extensions() {
        let dir = tempfile::tempdir().unwrap();
        unpacked(dir.path(), "adblock");
        unpacked(dir.path(), "recorder.v2");
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        std::fs::write(dir.path().join("plain-file"), "x").unwrap();
        let names: Vec<String> = [
            "adblock",
            "empty",
            "plain-file",
            "gone",
            "recorder.v2",
            "gone",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            missing_extensions(dir.path(), &names).await,
            ["empty", "plain-file", "gone"]
        );
        assert_eq!(
            installed_extensions(dir.path()).await,
            ["adblock", "recorder.v2"]
        );
        assert!(
            installed_extensions(&dir.path().join("nope"))
                .await
                .is_empty()
        );
        assert!(missing_extensions(dir.path(), &[]).await.is_empty());
    }

    #[test]
    fn a_missing_extension_refusal_says_what_is_accepted_and_installed() {
        let message =
            missing_extensions_message(&["gone".into(), "lost".into()], &["adblock".into()]);
        assert!(
            message.contains("no unpacked extension gone, lost"),
            "{message}"
        );
        assert!(message.contains("manifest.json"), "{message}");
        assert!(message.contains("last component"), "{message}");
        assert!(message.ends_with("it has adblock"), "{message}");
        assert!(missing_extensions_message(&["x".into()], &[]).ends_with("it has none"));
        let many: Vec<String> = (0..25).map(|i| format!("e{i:02}")).collect();
        let message = missing_extensions_message(&["x".into()], &many);
        assert!(message.ends_with("e19 and 5 more"), "{message}");
        assert!(!message.contains("e20"), "{message}");
    }

    #[test]
    fn extensions_load_from_the_extensions_directory_only() {
        let dir = PathBuf::from("/p");
        let extensions = vec!["adblock".to_owned(), "recorder.v2".to_owned()];
        let session = SessionLaunch {
            extensions: &extensions,
            ..launch(&dir, &[])
        };
        let command = browser_command(&BrowserSpec::default(), Path::new("/c"), &session);
        assert!(
            command
                .args
                .contains(&"--load-extension=/ext/adblock,/ext/recorder.v2".to_owned()),
            "{:?}",
            command.args
        );
    }

    #[test]
    fn the_egress_proxy_flags_come_after_every_other_argument() {
        let browser = BrowserSpec {
            extra_args: vec!["--proxy-server=http://fleet:1".into()],
            ..BrowserSpec::default()
        };
        let dir = PathBuf::from("/p");
        let session_args = vec!["--proxy-server=socks5://session:2".to_owned()];
        let session = SessionLaunch {
            egress_proxy: Some(9221),
            ..launch(&dir, &session_args)
        };
        let command = browser_command(&browser, Path::new("/c"), &session);
        let n = command.args.len();
        assert_eq!(
            &command.args[n - 5..],
            [
                "--proxy-server=http://127.0.0.1:9221",
                "--proxy-bypass-list=<-loopback>",
                "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
                "--",
                "about:blank",
            ]
        );
    }

    #[test]
    fn a_session_proxy_the_browser_uses_alone_takes_all_its_traffic_loopback_included() {
        // (A proxy with credentials or a bypass list is chained through the
        // agent instead: the browser is then given the chain's port.)
        let dir = PathBuf::from("/p");
        let proxy = ProxyConfig {
            server: "socks5://proxy.example:1080".into(),
            bypass: None,
            username: None,
            password: None,
            sealed_credentials: None,
        };
        let session = SessionLaunch {
            egress_proxy: Some(9221),
            proxy: Some(&proxy),
            ..launch(&dir, &[])
        };
        let command = browser_command(&BrowserSpec::default(), Path::new("/c"), &session);
        let proxies: Vec<&String> = command
            .args
            .iter()
            .filter(|a| a.starts_with("--proxy"))
            .collect();
        assert_eq!(
            proxies,
            [
                "--proxy-server=socks5://proxy.example:1080",
                "--proxy-bypass-list=<-loopback>"
            ]
        );
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
