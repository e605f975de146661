//! The files a session's client may touch: one downloads directory,
//! `<profile>/Downloads`, inside the session's profile so that it goes with
//! a temporary profile and stays with a named one.
//!
//! Two enforcers keep a client's files there. At launch the agent writes
//! `download.default_directory` into the profile's `Default/Preferences`, so
//! a download in the default browser context lands there even when the
//! client never sets a download behaviour; the DevTools gateway's
//! [CDP filter](super::cdp_filter) points every download behaviour a client
//! sets at the same directory and admits file uploads only from it.
//!
//! What Chromium 148 (`--headless=new`) does with that preference, checked
//! by hand and by `tests/suite/session_policy.rs`: a download in the default
//! context lands in the directory. A context made by
//! `Target.createBrowserContext` does not follow the preference: a download
//! there is not saved anywhere until the client sets a download behaviour for
//! that context, which the filter then points at the directory.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The downloads directory's name inside a profile.
const DOWNLOADS_DIR: &str = "Downloads";
/// The preferences file of the profile's default user, relative to the
/// profile (the `--user-data-dir`).
const PREFERENCES_FILE: &str = "Default/Preferences";

/// The files of one session: what the CDP filter confines downloads and
/// uploads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionFiles {
    /// The only directory downloads go to and uploads come from (absolute).
    pub downloads: PathBuf,
}

impl SessionFiles {
    /// The files of the session whose browser runs on `profile_dir`.
    pub fn of_profile(profile_dir: &Path) -> Self {
        SessionFiles {
            downloads: profile_dir.join(DOWNLOADS_DIR),
        }
    }
}

/// Why a session's downloads directory could not be set up: the browser
/// must not start, since its downloads would land in the agent user's home.
#[derive(Debug, thiserror::Error)]
pub enum SessionFilesError {
    /// The directory or the preferences file could not be written.
    #[error("session files at {path}: {source}")]
    Io {
        /// The directory or file concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// `preferences` (a profile's `Default/Preferences`, if it had one) with
/// downloads going to `downloads` without a prompt; every other preference
/// is kept. A file that is not a JSON object is replaced: Chromium would
/// reset it anyway.
pub fn with_download_directory(preferences: Option<Value>, downloads: &Path) -> Value {
    let mut root = match preferences {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let download = root
        .entry("download")
        .or_insert_with(|| Value::Object(Map::new()));
    if !download.is_object() {
        *download = Value::Object(Map::new());
    }
    if let Value::Object(download) = download {
        download.insert(
            "default_directory".into(),
            Value::String(downloads.to_string_lossy().into_owned()),
        );
        download.insert("prompt_for_download".into(), Value::Bool(false));
    }
    Value::Object(root)
}

/// Creates the downloads directory of the profile at `profile_dir` and points
/// the profile's download preference at it, merging into the preferences a
/// named profile already has. Run before the browser starts: Chromium reads
/// the file at start and rewrites it at exit.
pub async fn prepare(profile_dir: &Path) -> Result<SessionFiles, SessionFilesError> {
    let files = SessionFiles::of_profile(profile_dir);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SessionFilesError::Io { path, source }
    };
    tokio::fs::create_dir_all(&files.downloads)
        .await
        .map_err(io(&files.downloads))?;
    let file = profile_dir.join(PREFERENCES_FILE);
    if let Some(parent) = file.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io(parent))?;
    }
    let existing = match tokio::fs::read(&file).await {
        Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(io(&file)(error)),
    };
    let merged = with_download_directory(existing, &files.downloads);
    tokio::fs::write(&file, merged.to_string())
        .await
        .map_err(io(&file))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn downloads_live_inside_the_profile() {
        let files = SessionFiles::of_profile(Path::new("/state/profiles/tmp/s-1"));
        assert_eq!(
            files.downloads,
            Path::new("/state/profiles/tmp/s-1/Downloads")
        );
    }

    #[test]
    fn a_fresh_profile_gets_only_the_download_preferences() {
        let prefs = with_download_directory(None, Path::new("/p/Downloads"));
        assert_eq!(
            prefs,
            json!({"download": {"default_directory": "/p/Downloads", "prompt_for_download": false}})
        );
    }

    #[test]
    fn a_named_profile_keeps_its_other_preferences() {
        let existing = json!({
            "profile": {"name": "shop"},
            "download": {"default_directory": "/home/me", "directory_upgrade": true, "prompt_for_download": true}
        });
        let prefs = with_download_directory(Some(existing), Path::new("/p/Downloads"));
        assert_eq!(prefs["profile"]["name"], "shop");
        assert_eq!(prefs["download"]["directory_upgrade"], true);
        assert_eq!(prefs["download"]["default_directory"], "/p/Downloads");
        assert_eq!(prefs["download"]["prompt_for_download"], false);
    }

    #[test]
    fn preferences_that_are_not_an_object_are_replaced() {
        for existing in [json!([1, 2]), json!("x"), json!({"download": 7})] {
            let prefs = with_download_directory(Some(existing), Path::new("/p/Downloads"));
            assert_eq!(prefs["download"]["default_directory"], "/p/Downloads");
        }
    }

    #[tokio::test]
    async fn prepare_creates_the_directory_and_merges_the_file()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let profile = dir.path().join("named/shop");
        std::fs::create_dir_all(profile.join("Default"))?;
        std::fs::write(
            profile.join(PREFERENCES_FILE),
            r#"{"session":{"restore_on_startup":1}}"#,
        )?;
        let files = prepare(&profile).await?;
        assert!(files.downloads.is_dir());
        let prefs: Value = serde_json::from_slice(&std::fs::read(profile.join(PREFERENCES_FILE))?)?;
        assert_eq!(prefs["session"]["restore_on_startup"], 1);
        assert_eq!(
            prefs["download"]["default_directory"],
            files.downloads.to_string_lossy().as_ref()
        );

        let fresh = dir.path().join("tmp/s-1");
        std::fs::create_dir_all(&fresh)?;
        let files = prepare(&fresh).await?;
        assert!(files.downloads.is_dir());
        assert!(fresh.join(PREFERENCES_FILE).is_file());
        Ok(())
    }
}
