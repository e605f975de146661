//! Where Chrome, Chromium or Edge is installed, for fleets that do not name a
//! browser path.

use std::path::PathBuf;

use crate::api::fleet::Platform;

/// Linux install locations, most specific first: Debian/Ubuntu Chromium,
/// Google Chrome, and the snap.
const LINUX_CANDIDATES: &[&str] = &[
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome-stable",
    "/usr/bin/google-chrome",
    "/opt/google/chrome/chrome",
    "/snap/bin/chromium",
];

/// Windows install locations: an environment variable and the path under it.
/// Chrome (system-wide 64 and 32-bit, then per-user), then Edge, which ships
/// with Windows Server 2022 and later.
const WINDOWS_CANDIDATES: &[(&str, &str)] = &[
    ("ProgramFiles", r"Google\Chrome\Application\chrome.exe"),
    ("ProgramFiles(x86)", r"Google\Chrome\Application\chrome.exe"),
    ("LocalAppData", r"Google\Chrome\Application\chrome.exe"),
    ("ProgramFiles", r"Microsoft\Edge\Application\msedge.exe"),
    (
        "ProgramFiles(x86)",
        r"Microsoft\Edge\Application\msedge.exe",
    ),
];

/// The system-wide Windows browser paths, written with their environment
/// variable (`%ProgramFiles%\Google\…\chrome.exe`) as Windows Firewall
/// takes a program path; per-user installs are left out.
pub fn windows_system_browsers() -> Vec<String> {
    WINDOWS_CANDIDATES
        .iter()
        .filter(|(variable, _)| variable.starts_with("ProgramFiles"))
        .map(|(variable, relative)| format!("%{variable}%\\{relative}"))
        .collect()
}

/// The platform this agent was built for.
pub fn native_platform() -> Platform {
    if cfg!(windows) {
        Platform::Windows
    } else {
        Platform::Linux
    }
}

/// The places a browser may be installed on `platform`, in order of
/// preference. Windows paths are built from environment variables read
/// through `env` (a variable that is unset or empty is skipped); the result is
/// the same on every OS, so it can be tested anywhere.
pub fn browser_candidates(
    platform: Platform,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<PathBuf> {
    match platform {
        Platform::Linux => LINUX_CANDIDATES.iter().map(PathBuf::from).collect(),
        Platform::Windows => {
            let mut paths: Vec<PathBuf> = Vec::new();
            for (variable, relative) in WINDOWS_CANDIDATES {
                let Some(base) = env(variable) else {
                    continue;
                };
                let base = base.trim_end_matches(['\\', '/']);
                if base.is_empty() {
                    continue;
                }
                // Joined as text: on Linux, Path::join would use '/'.
                let path = PathBuf::from(format!(r"{base}\{relative}"));
                // On 32-bit Windows both ProgramFiles variables are the same.
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
            paths
        }
    }
}

/// The first browser installed on this machine, if any.
pub fn discover_browser() -> Option<PathBuf> {
    let env = |name: &str| std::env::var(name).ok();
    browser_candidates(native_platform(), env)
        .into_iter()
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_candidates_prefer_chrome_then_edge() {
        let env = |name: &str| {
            let value = match name {
                "ProgramFiles" => r"C:\Program Files",
                "ProgramFiles(x86)" => r"C:\Program Files (x86)\",
                "LocalAppData" => r"C:\Users\bf\AppData\Local",
                _ => return None,
            };
            Some(value.to_owned())
        };
        let paths: Vec<String> = browser_candidates(Platform::Windows, env)
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                r"C:\Program Files\Google\Chrome\Application\chrome.exe",
                r"C:\Program Files (x86)\Google\Chrome\Application\chrome.exe",
                r"C:\Users\bf\AppData\Local\Google\Chrome\Application\chrome.exe",
                r"C:\Program Files\Microsoft\Edge\Application\msedge.exe",
                r"C:\Program Files (x86)\Microsoft\Edge\Application\msedge.exe",
            ]
        );
    }

    #[test]
    fn windows_candidates_skip_unset_variables_and_duplicates() {
        let env = |name: &str| match name {
            "ProgramFiles" | "ProgramFiles(x86)" => Some(r"C:\Program Files".to_owned()),
            "LocalAppData" => Some(String::new()),
            _ => None,
        };
        let paths: Vec<String> = browser_candidates(Platform::Windows, env)
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                r"C:\Program Files\Google\Chrome\Application\chrome.exe",
                r"C:\Program Files\Microsoft\Edge\Application\msedge.exe",
            ]
        );
        assert!(browser_candidates(Platform::Windows, |_| None).is_empty());
    }

    #[test]
    fn linux_candidates_start_with_chromium() {
        let paths = browser_candidates(Platform::Linux, |_| None);
        assert_eq!(paths.first(), Some(&PathBuf::from("/usr/bin/chromium")));
        assert!(paths.contains(&PathBuf::from("/opt/google/chrome/chrome")));
        assert!(paths.contains(&PathBuf::from("/snap/bin/chromium")));
        assert_eq!(paths.len(), 6);
    }

    #[test]
    fn chromium_is_discovered_on_this_machine() {
        // The build machines have Debian's Chromium.
        if cfg!(target_os = "linux") && PathBuf::from("/usr/bin/chromium").is_file() {
            assert_eq!(discover_browser(), Some(PathBuf::from("/usr/bin/chromium")));
        }
    }
}
