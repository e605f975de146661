//! Browser profile directories. Chrome 136 and later ignore
//! `--remote-debugging-port` on the default profile, so every browser gets a
//! `--user-data-dir` of its own under one root:
//!
//! * `<root>/tmp/<session id>`: a temporary profile, empty at launch and
//!   deleted when the session ends;
//! * `<root>/named/<name>`: a named profile, kept between sessions (cookies,
//!   logins) and deleted only after it has not been used for the fleet's max
//!   age.
//!
//! The store remembers which profiles are in use, so that a named profile is
//! never open in two browsers and cleanup never deletes a profile a browser
//! runs on. That memory is lost when the agent restarts: the agent
//! [adopts](ProfileStore::adopt) the profiles of the browsers it re-adopts
//! before it runs [cleanup](ProfileStore::cleanup).
//!
//! Names and session ids are checked against `[A-Za-z0-9._-]{1,64}` (and never
//! `.` or `..`), so a request can never reach outside the root.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

/// Where temporary profiles live, under the root.
const TEMPORARY_DIR: &str = "tmp";
/// Where named profiles live, under the root.
const NAMED_DIR: &str = "named";
/// The file in a named profile whose modification time is its last use.
const LAST_USED_MARKER: &str = ".browserfleet-last-used";
/// The longest profile name or session id.
const MAX_NAME_LENGTH: usize = 64;
/// How many times a removal is tried: a browser that is still exiting may
/// write into its profile (Linux) or hold files open (Windows) for a moment.
const REMOVE_ATTEMPTS: u32 = 5;
/// The wait before the second attempt; it grows by this much each time.
const REMOVE_BACKOFF: Duration = Duration::from_millis(200);

/// Whether a profile lives for one session or is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProfileKind {
    /// Created empty for one session and deleted when it ends.
    Temporary,
    /// Kept between sessions under its name.
    Named,
}

/// A profile directory marked in use in its [`ProfileStore`]; give it back
/// with [`ProfileStore::release`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    kind: ProfileKind,
    name: String,
    path: PathBuf,
}

impl Profile {
    /// Temporary or named.
    pub fn kind(&self) -> ProfileKind {
        self.kind
    }

    /// The session id of a temporary profile, or the name of a named one.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory, for `--user-data-dir`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why a profile operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The profile name or session id is not allowed: the request is invalid.
    #[error("invalid profile name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Another session uses the profile: retry after it ends, or choose
    /// another name.
    #[error("profile {path} is in use")]
    InUse {
        /// The profile directory.
        path: PathBuf,
    },
    /// The path is not a profile directory of this store.
    #[error("{path} is not a profile of this store")]
    NotAProfile {
        /// The path given.
        path: PathBuf,
    },
    /// The file system refused (disk full, permissions, files held open).
    #[error("profile {path}: {source}")]
    Io {
        /// The directory or file concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Checks a profile name or session id: 1 to 64 of `A-Z a-z 0-9 . _ -`, and
/// not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), ProfileError> {
    let invalid = |reason| {
        Err(ProfileError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME_LENGTH {
        return invalid("must be 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return invalid("only letters, digits, '.', '_' and '-' are allowed");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are not names");
    }
    Ok(())
}

/// A profile directory found on disk, as cleanup sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileEntry {
    /// The directory.
    pub path: PathBuf,
    /// Temporary or named.
    pub kind: ProfileKind,
    /// When a named profile was last used, if known.
    pub last_used: Option<SystemTime>,
}

/// The profiles cleanup removes: every temporary profile not in use (at any
/// age: a temporary profile not in use is the leftover of a crash), and every
/// named profile not in use whose last use is more than `max_age` before
/// `now`. A profile in use, or a named one of unknown age, is never chosen.
pub fn select_for_removal(
    entries: &[ProfileEntry],
    in_use: &HashSet<PathBuf>,
    max_age: Duration,
    now: SystemTime,
) -> Vec<PathBuf> {
    let mut chosen = Vec::new();
    for entry in entries {
        if in_use.contains(&entry.path) {
            continue;
        }
        let remove = match entry.kind {
            ProfileKind::Temporary => true,
            ProfileKind::Named => entry.last_used.is_some_and(|last_used| {
                now.duration_since(last_used).is_ok_and(|age| age > max_age)
            }),
        };
        if remove {
            chosen.push(entry.path.clone());
        }
    }
    chosen
}

/// The profile directories under one root, and which of them are in use.
/// Shared by the agent's sessions (it is `Sync`); the file system work runs on
/// tokio's blocking pool.
#[derive(Debug)]
pub struct ProfileStore {
    root: PathBuf,
    in_use: Mutex<HashSet<PathBuf>>,
}

/// The directories profiles are made in under the profiles root `root`:
/// one for temporary profiles, one for named ones.
pub fn profile_parents(root: &Path) -> [PathBuf; 2] {
    [root.join(TEMPORARY_DIR), root.join(NAMED_DIR)]
}

/// Where the profiles of an agent with state directory `state_dir` live.
pub fn profiles_root(state_dir: &Path) -> PathBuf {
    state_dir.join("profiles")
}

/// What the command line of every browser started on a profile under
/// `root` contains: how the agent finds browsers its table does not know,
/// and how the node simulator finds the browsers of an agent it stopped.
pub fn browser_marker(root: &Path) -> String {
    format!("--user-data-dir={}", root.display())
}

impl ProfileStore {
    /// A store under `root` (an absolute path; created on first use).
    pub fn new(root: PathBuf) -> Self {
        ProfileStore {
            root,
            in_use: Mutex::new(HashSet::new()),
        }
    }

    /// The root: every profile directory is under it, so it also finds the
    /// browsers started on them.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the profile at `path` is in use.
    pub fn is_in_use(&self, path: &Path) -> bool {
        self.lock().contains(path)
    }

    /// Creates the empty temporary profile of a session and marks it in use.
    /// A directory left under the same id by a crash is emptied first.
    pub async fn create_temporary(&self, session_id: &str) -> Result<Profile, ProfileError> {
        let profile = self.profile(ProfileKind::Temporary, session_id)?;
        self.reserve(&profile.path)?;
        let made = async {
            remove_dir(&profile.path).await?;
            create_dir(&profile.path).await
        };
        if let Err(error) = made.await {
            self.unreserve(&profile.path);
            return Err(error);
        }
        Ok(profile)
    }

    /// Opens a named profile, creating it if missing, marks it in use and
    /// records its use. Fails with [`ProfileError::InUse`] while another
    /// session has it.
    pub async fn open_named(&self, name: &str) -> Result<Profile, ProfileError> {
        let profile = self.profile(ProfileKind::Named, name)?;
        self.reserve(&profile.path)?;
        let made = async {
            create_dir(&profile.path).await?;
            touch(&profile.path).await
        };
        if let Err(error) = made.await {
            self.unreserve(&profile.path);
            return Err(error);
        }
        Ok(profile)
    }

    /// Gives a profile back when its browser has ended: a temporary one is
    /// deleted, a named one records its last use. It is no longer in use even
    /// if that fails (cleanup tries again later).
    pub async fn release(&self, profile: &Profile) -> Result<(), ProfileError> {
        let result = match profile.kind {
            ProfileKind::Temporary => remove_dir(&profile.path).await,
            ProfileKind::Named => touch(&profile.path).await,
        };
        self.unreserve(&profile.path);
        result
    }

    /// Deletes the temporary profile of a session that is not in use (one
    /// whose browser ended while the agent was down). Returns whether it
    /// existed.
    pub async fn remove_temporary(&self, session_id: &str) -> Result<bool, ProfileError> {
        let profile = self.profile(ProfileKind::Temporary, session_id)?;
        self.reserve(&profile.path)?;
        let existed = tokio::fs::try_exists(&profile.path).await.unwrap_or(true);
        let removed = remove_dir(&profile.path).await;
        self.unreserve(&profile.path);
        removed.map(|()| existed)
    }

    /// Marks the profile at `path` in use again, after an agent restart, for a
    /// browser re-adopted from the session table.
    pub fn adopt(&self, path: &Path) -> Result<Profile, ProfileError> {
        let not_a_profile = || ProfileError::NotAProfile {
            path: path.to_owned(),
        };
        let parent = path.parent().ok_or_else(not_a_profile)?;
        let kind = if parent == self.root.join(TEMPORARY_DIR) {
            ProfileKind::Temporary
        } else if parent == self.root.join(NAMED_DIR) {
            ProfileKind::Named
        } else {
            return Err(not_a_profile());
        };
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(not_a_profile)?;
        let profile = self.profile(kind, name)?;
        self.reserve(&profile.path)?;
        Ok(profile)
    }

    /// Deletes the temporary profiles not in use and the named profiles not
    /// used for more than `max_age` (see [`select_for_removal`]); returns the
    /// directories deleted. A directory that cannot be deleted is logged and
    /// left for the next cleanup. Run it only after the agent has adopted the
    /// profiles of the browsers it re-adopted.
    pub async fn cleanup(
        &self,
        max_age: Duration,
        now: SystemTime,
    ) -> Result<Vec<PathBuf>, ProfileError> {
        let mut entries =
            list_profiles(&self.root.join(TEMPORARY_DIR), ProfileKind::Temporary).await?;
        entries.extend(list_profiles(&self.root.join(NAMED_DIR), ProfileKind::Named).await?);
        // Chosen and reserved under one lock, so no session can open a
        // profile while it is being deleted.
        let chosen = {
            let mut in_use = self.lock();
            let chosen = select_for_removal(&entries, &in_use, max_age, now);
            in_use.extend(chosen.iter().cloned());
            chosen
        };
        let mut removed = Vec::new();
        for path in chosen {
            match remove_dir(&path).await {
                Ok(()) => removed.push(path.clone()),
                Err(error) => tracing::warn!(%error, "cannot remove an unused browser profile"),
            }
            self.unreserve(&path);
        }
        Ok(removed)
    }

    /// [`ProfileStore::cleanup`] now, logging what it did: leftover
    /// temporary profiles and named ones unused for longer than `max_age`
    /// go; profiles in use are never touched.
    pub async fn remove_old(&self, max_age: Duration) {
        match self.cleanup(max_age, SystemTime::now()).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(count = removed.len(), "old profiles removed")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "profile cleanup failed"),
        }
    }

    fn profile(&self, kind: ProfileKind, name: &str) -> Result<Profile, ProfileError> {
        validate_name(name)?;
        let dir = match kind {
            ProfileKind::Temporary => TEMPORARY_DIR,
            ProfileKind::Named => NAMED_DIR,
        };
        Ok(Profile {
            kind,
            name: name.to_owned(),
            path: self.root.join(dir).join(name),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<PathBuf>> {
        // The set stays consistent even if a holder panicked: every change is
        // a single insert or remove.
        self.in_use.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reserve(&self, path: &Path) -> Result<(), ProfileError> {
        if self.lock().insert(path.to_owned()) {
            Ok(())
        } else {
            Err(ProfileError::InUse {
                path: path.to_owned(),
            })
        }
    }

    fn unreserve(&self, path: &Path) {
        self.lock().remove(path);
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ProfileError + '_ {
    move |source| ProfileError::Io {
        path: path.to_owned(),
        source,
    }
}

async fn create_dir(path: &Path) -> Result<(), ProfileError> {
    tokio::fs::create_dir_all(path)
        .await
        .map_err(io_error(path))
}

/// Records a named profile's use: rewrites its marker file, which updates the
/// file's modification time (the content is for people reading the disk).
async fn touch(profile: &Path) -> Result<(), ProfileError> {
    let marker = profile.join(LAST_USED_MARKER);
    let stamp = format!("{}\n", jiff::Timestamp::now());
    tokio::fs::write(&marker, stamp)
        .await
        .map_err(io_error(&marker))
}

/// Deletes a directory tree, retrying a few times; a directory already gone
/// counts as deleted.
async fn remove_dir(path: &Path) -> Result<(), ProfileError> {
    let mut attempt = 1;
    loop {
        let error = match tokio::fs::remove_dir_all(path).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        // NotFound may also mean a file inside vanished mid-way: look again.
        if !tokio::fs::try_exists(path).await.unwrap_or(true) {
            return Ok(());
        }
        if attempt >= REMOVE_ATTEMPTS {
            return Err(io_error(path)(error));
        }
        tokio::time::sleep(REMOVE_BACKOFF * attempt).await;
        attempt += 1;
    }
}

/// The profile directories in `dir` (none if it does not exist). Entries
/// that are not directories or have names the store would never create are
/// not ours, and are left alone.
async fn list_profiles(dir: &Path, kind: ProfileKind) -> Result<Vec<ProfileEntry>, ProfileError> {
    let mut reader = match tokio::fs::read_dir(dir).await {
        Ok(reader) => reader,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(dir)(error)),
    };
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry().await.map_err(io_error(dir))? {
        let valid = entry
            .file_name()
            .to_str()
            .is_some_and(|name| validate_name(name).is_ok());
        let is_dir = entry.file_type().await.is_ok_and(|kind| kind.is_dir());
        if !valid || !is_dir {
            continue;
        }
        let path = entry.path();
        let last_used = match kind {
            ProfileKind::Temporary => None,
            ProfileKind::Named => last_used(&path).await,
        };
        entries.push(ProfileEntry {
            path,
            kind,
            last_used,
        });
    }
    Ok(entries)
}

/// When a named profile was last used: its marker's modification time, or
/// the directory's if the marker is missing (a crash between creating the
/// directory and writing the marker).
async fn last_used(profile: &Path) -> Option<SystemTime> {
    let marker = tokio::fs::metadata(profile.join(LAST_USED_MARKER)).await;
    match marker {
        Ok(metadata) => metadata.modified().ok(),
        Err(_) => tokio::fs::metadata(profile).await.ok()?.modified().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn entry(
        path: &str,
        kind: ProfileKind,
        age: Option<Duration>,
        now: SystemTime,
    ) -> ProfileEntry {
        ProfileEntry {
            path: PathBuf::from(path),
            kind,
            last_used: age.and_then(|age| now.checked_sub(age)),
        }
    }

    #[test]
    fn good_names_pass() {
        for name in [
            "a",
            "work",
            "9f1c2d3e-0000-4000-8000-00000000abcd",
            "a.b_c-D",
            "...",
        ] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
        assert!(validate_name(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn names_that_could_leave_the_root_fail() {
        let bad = [
            "", ".", "..", "../x", "a/b", r"a\b", "/abs", "a b", "é", "a\0b", "C:", "~",
        ];
        for name in bad {
            assert!(
                matches!(validate_name(name), Err(ProfileError::InvalidName { .. })),
                "{name:?}"
            );
        }
        assert!(validate_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn unused_temporary_profiles_go_at_any_age() {
        let now = SystemTime::now();
        let entries = [
            entry(
                "/p/tmp/fresh",
                ProfileKind::Temporary,
                Some(Duration::ZERO),
                now,
            ),
            entry("/p/tmp/unknown", ProfileKind::Temporary, None, now),
            entry("/p/tmp/running", ProfileKind::Temporary, None, now),
        ];
        let in_use = HashSet::from([PathBuf::from("/p/tmp/running")]);
        assert_eq!(
            select_for_removal(&entries, &in_use, HOUR, now),
            [
                PathBuf::from("/p/tmp/fresh"),
                PathBuf::from("/p/tmp/unknown")
            ]
        );
    }

    #[test]
    fn named_profiles_go_only_when_unused_past_the_max_age() {
        let now = SystemTime::now();
        let future = now + HOUR;
        let entries = [
            entry("/p/named/old", ProfileKind::Named, Some(2 * HOUR), now),
            entry(
                "/p/named/old-but-open",
                ProfileKind::Named,
                Some(2 * HOUR),
                now,
            ),
            entry("/p/named/recent", ProfileKind::Named, Some(HOUR / 2), now),
            entry("/p/named/exactly", ProfileKind::Named, Some(HOUR), now),
            entry("/p/named/unknown", ProfileKind::Named, None, now),
            ProfileEntry {
                path: PathBuf::from("/p/named/clock-skew"),
                kind: ProfileKind::Named,
                last_used: Some(future),
            },
        ];
        let in_use = HashSet::from([PathBuf::from("/p/named/old-but-open")]);
        assert_eq!(
            select_for_removal(&entries, &in_use, HOUR, now),
            [PathBuf::from("/p/named/old")]
        );
    }

    proptest! {
        #[test]
        fn a_profile_in_use_is_never_chosen(
            profiles in prop::collection::vec((0u8..20, any::<bool>(), prop::option::of(0u64..10_000), any::<bool>()), 0..30),
            max_age in 0u64..10_000,
        ) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
            let mut entries = Vec::new();
            let mut in_use = HashSet::new();
            for (id, temporary, age, used) in profiles {
                let kind = if temporary { ProfileKind::Temporary } else { ProfileKind::Named };
                let path = PathBuf::from(format!("/p/{id}"));
                if used {
                    in_use.insert(path.clone());
                }
                entries.push(ProfileEntry {
                    path,
                    kind,
                    last_used: age.map(|age| now - Duration::from_secs(age)),
                });
            }
            let chosen = select_for_removal(&entries, &in_use, Duration::from_secs(max_age), now);
            for path in &chosen {
                prop_assert!(!in_use.contains(path));
            }
        }
    }

    fn store() -> io::Result<(tempfile::TempDir, ProfileStore)> {
        let dir = tempfile::tempdir()?;
        let store = ProfileStore::new(dir.path().join("profiles"));
        Ok((dir, store))
    }

    fn age_marker(profile: &Path, age: Duration) -> io::Result<()> {
        let marker = std::fs::File::options()
            .write(true)
            .open(profile.join(LAST_USED_MARKER))?;
        marker.set_modified(SystemTime::now() - age)
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[tokio::test]
    async fn temporary_profile_starts_empty_and_is_deleted_on_release() -> TestResult {
        let (_dir, store) = store()?;
        let leftover = store.root().join("tmp/s-1");
        std::fs::create_dir_all(&leftover)?;
        std::fs::write(leftover.join("Local State"), "{}")?;

        let profile = store.create_temporary("s-1").await?;
        assert_eq!(profile.path(), leftover);
        assert_eq!(profile.kind(), ProfileKind::Temporary);
        assert_eq!(std::fs::read_dir(profile.path())?.count(), 0);
        assert!(store.is_in_use(profile.path()));
        assert!(matches!(
            store.create_temporary("s-1").await,
            Err(ProfileError::InUse { .. })
        ));

        store.release(&profile).await?;
        assert!(!profile.path().exists());
        assert!(!store.is_in_use(profile.path()));
        Ok(())
    }

    #[tokio::test]
    async fn named_profile_is_kept_and_used_by_one_session_at_a_time() -> TestResult {
        let (_dir, store) = store()?;
        let profile = store.open_named("shop").await?;
        assert_eq!(profile.path(), store.root().join("named/shop"));
        std::fs::write(profile.path().join("Cookies"), "c")?;
        assert!(matches!(
            store.open_named("shop").await,
            Err(ProfileError::InUse { .. })
        ));

        age_marker(profile.path(), 3 * HOUR)?;
        store.release(&profile).await?;
        let used = std::fs::metadata(profile.path().join(LAST_USED_MARKER))?.modified()?;
        assert!(SystemTime::now().duration_since(used).unwrap_or_default() < HOUR);

        let again = store.open_named("shop").await?;
        assert_eq!(std::fs::read_to_string(again.path().join("Cookies"))?, "c");
        Ok(())
    }

    #[tokio::test]
    async fn traversal_is_refused_before_any_io() -> TestResult {
        let (dir, store) = store()?;
        for name in ["..", "../escape", "a/../../b"] {
            assert!(matches!(
                store.create_temporary(name).await,
                Err(ProfileError::InvalidName { .. })
            ));
            assert!(matches!(
                store.open_named(name).await,
                Err(ProfileError::InvalidName { .. })
            ));
        }
        assert!(!dir.path().join("escape").exists());
        assert!(!store.root().exists());
        Ok(())
    }

    #[tokio::test]
    async fn adopt_marks_profiles_of_this_store_in_use() -> TestResult {
        let (dir, store) = store()?;
        let temporary = store.adopt(&store.root().join("tmp/s-9"))?;
        assert_eq!(temporary.kind(), ProfileKind::Temporary);
        assert_eq!(temporary.name(), "s-9");
        let named = store.adopt(&store.root().join("named/shop"))?;
        assert_eq!(named.kind(), ProfileKind::Named);
        assert!(matches!(
            store.adopt(&store.root().join("named/shop")),
            Err(ProfileError::InUse { .. })
        ));
        assert!(matches!(
            store.open_named("shop").await,
            Err(ProfileError::InUse { .. })
        ));
        for outside in [
            dir.path().join("elsewhere/x"),
            store.root().join("tmp"),
            store.root().join("other/x"),
            store.root().join("tmp/x/y"),
        ] {
            assert!(
                matches!(store.adopt(&outside), Err(ProfileError::NotAProfile { .. })),
                "{}",
                outside.display()
            );
        }
        assert!(matches!(
            store.adopt(&store.root().join("tmp/..")),
            Err(ProfileError::NotAProfile { .. } | ProfileError::InvalidName { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn remove_temporary_refuses_a_profile_in_use() -> TestResult {
        let (_dir, store) = store()?;
        let profile = store.create_temporary("s-2").await?;
        assert!(matches!(
            store.remove_temporary("s-2").await,
            Err(ProfileError::InUse { .. })
        ));
        assert!(profile.path().exists());

        std::fs::create_dir_all(store.root().join("tmp/s-3/Default"))?;
        assert!(store.remove_temporary("s-3").await?);
        assert!(!store.root().join("tmp/s-3").exists());
        assert!(!store.remove_temporary("s-3").await?);
        Ok(())
    }

    #[tokio::test]
    async fn cleanup_removes_leftovers_and_stale_named_profiles_only() -> TestResult {
        let (_dir, store) = store()?;
        let running = store.create_temporary("running").await?;
        std::fs::create_dir_all(store.root().join("tmp/crashed/Default"))?;
        let open_old = store.open_named("open-old").await?;
        age_marker(open_old.path(), 48 * HOUR)?;
        let stale = store.open_named("stale").await?;
        store.release(&stale).await?;
        age_marker(stale.path(), 48 * HOUR)?;
        let recent = store.open_named("recent").await?;
        store.release(&recent).await?;
        // Not ours: a file, and a directory with a name we never create.
        std::fs::write(store.root().join("named/notes.txt"), "x")?;
        std::fs::create_dir_all(store.root().join("named/not ours"))?;

        let mut removed = store.cleanup(24 * HOUR, SystemTime::now()).await?;
        removed.sort();
        assert_eq!(
            removed,
            [
                store.root().join("named/stale"),
                store.root().join("tmp/crashed")
            ]
        );
        for kept in [running.path(), open_old.path(), recent.path()] {
            assert!(kept.exists(), "{}", kept.display());
        }
        assert!(store.root().join("named/notes.txt").exists());
        assert!(store.root().join("named/not ours").exists());
        // Nothing removed stays reserved.
        assert!(!store.is_in_use(&store.root().join("named/stale")));
        Ok(())
    }

    #[tokio::test]
    async fn cleanup_of_a_store_never_used_removes_nothing() -> TestResult {
        let (_dir, store) = store()?;
        assert!(store.cleanup(HOUR, SystemTime::now()).await?.is_empty());
        Ok(())
    }
}
