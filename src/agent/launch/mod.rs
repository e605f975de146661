//! Launching one session's browser. [`plan`] decides whether and how, from
//! the request and the fleet's rules alone; this module carries the plan out
//! — profile, process, the wait for DevTools — and gives back everything
//! taken when a step fails. [`command`] is the browser's command line.

pub mod command;
pub mod plan;

use std::path::Path;
use std::time::{Instant, SystemTime};

use super::config::AgentSettings;
use super::devtools::DevTools;
use super::egress::{ChainGuard, Egress, Upstream};
use super::end::{Ending, Ends, release_profile};
use super::metrics::AgentMetrics;
use super::outbox::Outbox;
use super::process::{ExitWatch, LaunchSpec, ProcessControl, ProcessError};
use super::profiles::{Profile, ProfileKind, ProfileStore};
use super::session_files;
use super::sessions::Sessions;
use super::slots::Port;
use super::table::{ChainedProxy, SessionRecord, token_digest};
use super::tombstones::CANCELLED_MESSAGE;
use crate::cloud::queues::Queues;
use crate::protocol::{
    CreateRequest, FailureReason, ProxyConfig, Reply, SessionId, SessionToken, TerminationReason,
};

pub use command::{
    BrowserCommand, SessionLaunch, browser_command, installed_extensions, missing_extensions,
    missing_extensions_message, new_token,
};
pub use plan::{LaunchPlan, LaunchRules, ProfileChoice, Refusal, plan_launch, profile_dir_name};

/// Why a request was not launched.
#[derive(Debug)]
pub enum LaunchFailure {
    /// The request can never succeed here: answer `session.failed`.
    Rejected {
        /// Machine reason.
        reason: FailureReason,
        /// For humans.
        message: String,
    },
    /// Something that may work on a retry (here or elsewhere): give the
    /// message back.
    Retry(String),
    /// The session was ended (deleted, drained) while it started; its end
    /// was announced: the request is done.
    Ended,
}

/// What a launch settled before anything starts.
struct Prepared {
    plan: LaunchPlan,
    profile: Profile,
    /// The request's proxy, its credentials opened.
    proxy: Option<ProxyConfig>,
    /// Where the session's chained listener sends its traffic, when its
    /// proxy needs one.
    upstream: Option<Upstream>,
}

/// A browser just started, before it answered.
struct Started {
    record: SessionRecord,
    token: String,
    exit: ExitWatch,
}

/// What launching a browser takes.
pub struct Launcher<'a, Q> {
    /// The fleet's rules, browser and timeouts.
    pub settings: &'a AgentSettings,
    /// The browser found at start (unused with a launcher command).
    pub executable: &'a Path,
    /// The table the session joins.
    pub sessions: &'a Sessions,
    /// Starts the browser.
    pub processes: &'a dyn ProcessControl,
    /// Opens the profile.
    pub profiles: &'a ProfileStore,
    /// Waits for DevTools to answer.
    pub devtools: &'a DevTools,
    /// Counts launches and failures.
    pub metrics: &'a AgentMetrics,
    /// Composes the ready reply.
    pub outbox: &'a Outbox<Q>,
    /// The egress proxy the browser goes through.
    pub egress: &'a Egress,
    /// Ends a session whose start failed or was cancelled.
    pub ends: Ends<'a, Q>,
}

impl<Q: Queues> Launcher<'_, Q> {
    /// Launches the browser of `request` on the reserved `port`, waits until
    /// it answers DevTools, and returns the `session.ready` reply. On failure
    /// everything taken is given back (port, profile, process).
    pub async fn launch(
        &self,
        id: SessionId,
        port: Port,
        request: &CreateRequest,
        received: Instant,
    ) -> Result<Reply, LaunchFailure> {
        let prepared = match self.prepare(&id, request).await {
            Ok(prepared) => prepared,
            Err(failure) => {
                self.sessions.unreserve(&id, port);
                return Err(failure);
            }
        };
        let chain = match self.chain(&id, &prepared.upstream).await {
            Ok(chain) => chain,
            Err(message) => {
                release_profile(self.profiles, &prepared.profile).await;
                self.sessions.unreserve(&id, port);
                return Err(LaunchFailure::Retry(message));
            }
        };
        let started = match self.start(&id, port, request, &prepared, chain.as_ref()) {
            Ok(started) => started,
            Err(error) => {
                release_profile(self.profiles, &prepared.profile).await;
                self.sessions.unreserve(&id, port);
                self.metrics.failed("failedToStart");
                return Err(LaunchFailure::Retry(format!(
                    "browser did not start: {error}"
                )));
            }
        };
        self.metrics.launches.inc();
        let cancelled = self.sessions.add_starting(
            started.record,
            SessionToken::new(started.token),
            started.exit.clone(),
            prepared.profile,
            chain,
        );
        if cancelled {
            // Added all the same, so that the end releases everything.
            self.ends.end(&id, TerminationReason::Deleted, false).await;
            return Err(LaunchFailure::Rejected {
                reason: FailureReason::Cancelled,
                message: CANCELLED_MESSAGE.into(),
            });
        }
        let reply = match self.wait_ready(&id, port, started.exit).await {
            Ok(reply) => reply,
            Err(message) => {
                // Ended by a delete or a drain while it started: that end
                // answered the requester, and the request must not run again.
                if self
                    .ends
                    .end(&id, TerminationReason::FailedToStart, false)
                    .await
                    != Ending::Ended
                {
                    return Err(LaunchFailure::Ended);
                }
                self.metrics.failed("failedToStart");
                return Err(LaunchFailure::Retry(message));
            }
        };
        self.metrics
            .launch_seconds
            .observe(received.elapsed().as_secs_f64());
        tracing::info!(session = %id, %port, "session ready");
        Ok(reply)
    }

    /// The plan, after looking in the extensions directory for what the
    /// request names, the profile it chose, opened, and the request's proxy
    /// with its credentials opened and checked; or why the request is
    /// refused.
    async fn prepare(
        &self,
        id: &SessionId,
        request: &CreateRequest,
    ) -> Result<Prepared, LaunchFailure> {
        let settings = self.settings;
        let mut proxy = request.proxy.clone();
        let mut upstream = None;
        if let Some(proxy) = proxy.as_mut() {
            let refused = |message: String| LaunchFailure::Rejected {
                reason: FailureReason::InvalidRequest,
                message,
            };
            proxy
                .open_credentials(settings.config.message_key.expose().as_bytes(), id.as_str())
                .map_err(|e| refused(format!("proxy.sealedCredentials {e}")))?;
            self.egress
                .check_session_proxy(proxy)
                .await
                .map_err(refused)?;
            upstream = Upstream::of(proxy).map_err(refused)?;
        }
        let rules = LaunchRules {
            arg_policy: &settings.arg_policy,
            allow_persistent_profiles: settings.config.profiles.allow_persistent,
            default_ttl: settings.default_ttl,
            max_ttl: settings.max_ttl,
        };
        let missing = missing_extensions(&settings.extensions_dir, &request.extensions).await;
        let plan = match plan_launch(id, request, &rules, missing) {
            Ok(plan) => plan,
            Err(refusal) => {
                let installed = match refusal {
                    Refusal::MissingExtensions(_) => {
                        installed_extensions(&settings.extensions_dir).await
                    }
                    _ => Vec::new(),
                };
                return Err(LaunchFailure::Rejected {
                    reason: refusal.reason(),
                    message: plan::refusal_message(&refusal, &installed),
                });
            }
        };
        let profile = match &plan.profile {
            ProfileChoice::Named(name) => self.profiles.open_named(name.as_str()).await,
            ProfileChoice::Temporary(dir) => self.profiles.create_temporary(dir).await,
        };
        let profile = match profile {
            Ok(profile) => profile,
            // In use by another session, or not creatable on disk.
            Err(error) => {
                return Err(LaunchFailure::Rejected {
                    reason: FailureReason::ProfileUnavailable,
                    message: format!("profile: {error}"),
                });
            }
        };
        // Downloads land in the session's own directory from the start, even
        // for a client that never sets a download behaviour.
        if let Err(error) = session_files::prepare(profile.path()).await {
            release_profile(self.profiles, &profile).await;
            return Err(LaunchFailure::Rejected {
                reason: FailureReason::ProfileUnavailable,
                message: format!("profile: {error}"),
            });
        }
        if let Some(user) = &settings.browser_user
            && let Err(error) = user.hand_over(profile.path())
        {
            release_profile(self.profiles, &profile).await;
            return Err(LaunchFailure::Rejected {
                reason: FailureReason::ProfileUnavailable,
                message: format!("profile: {error}"),
            });
        }
        Ok(Prepared {
            plan,
            profile,
            proxy,
            upstream,
        })
    }

    /// The chained listener of a session whose proxy needs one (see
    /// [`Upstream`]); `None` for any other session.
    async fn chain(
        &self,
        id: &SessionId,
        upstream: &Option<Upstream>,
    ) -> Result<Option<ChainGuard>, String> {
        let Some(upstream) = upstream else {
            return Ok(None);
        };
        self.egress
            .start_chain(0, upstream.clone())
            .await
            .map(Some)
            .map_err(|e| format!("session {id}: cannot listen for its proxy: {e}"))
    }

    /// Starts the browser and writes down what was started.
    fn start(
        &self,
        id: &SessionId,
        port: Port,
        request: &CreateRequest,
        prepared: &Prepared,
        chain: Option<&ChainGuard>,
    ) -> Result<Started, ProcessError> {
        let Prepared {
            plan,
            profile,
            proxy,
            ..
        } = prepared;
        let command = browser_command(
            &self.settings.config.browser,
            self.executable,
            &SessionLaunch {
                port,
                profile_dir: profile.path(),
                session_args: &plan.args,
                // A chained session's browser knows only the chain.
                proxy: if chain.is_some() {
                    None
                } else {
                    proxy.as_ref()
                },
                extensions: &request.extensions,
                extensions_dir: &self.settings.extensions_dir,
                start_url: request.start_url.as_deref(),
                egress_proxy: Some(chain.map_or(self.egress.port, |c| c.port)),
            },
        );
        let run_as = self.settings.browser_user.as_ref().map(|user| user.ids);
        // A browser of its own user has no home of its own: its profile is
        // one, so that nothing it writes lands outside it (`~/Downloads`,
        // `~/.pki`, `~/.config`).
        let env = match run_as {
            Some(_) => vec![("HOME".to_owned(), profile.path().display().to_string())],
            None => Vec::new(),
        };
        let spawned = self.processes.spawn(&LaunchSpec {
            program: command.program,
            args: command.args,
            env,
            working_dir: None,
            log_file: None,
            run_as,
        })?;
        let token = new_token();
        let started = SystemTime::now();
        let record = SessionRecord {
            id: id.clone(),
            request_id: request.request_id.clone(),
            port: port.0,
            token_sha256: token_digest(&token),
            process: spawned.identity,
            profile_dir: profile.path().to_path_buf(),
            profile_temporary: profile.kind() == ProfileKind::Temporary,
            browser_path: String::new(),
            started,
            expires: started + plan.ttl,
            ttl_was_cut: plan.ttl_was_cut,
            use_by: started + self.settings.never_used_timeout,
            used: false,
            start_url: request.start_url.clone(),
            reply_to: request.reply_to.clone(),
            callback_url: request.callback_url.clone(),
            labels: request.labels.clone(),
            chained_proxy: chain.and_then(|chain| {
                let mut sealed = proxy.clone()?;
                sealed
                    .seal_credentials(
                        self.settings.config.message_key.expose().as_bytes(),
                        id.as_str(),
                    )
                    .ok()?;
                Some(ChainedProxy {
                    port: chain.port,
                    server: sealed.server,
                    sealed_credentials: sealed.sealed_credentials,
                    bypass: sealed.bypass,
                })
            }),
            ending: None,
            unanswered: true,
            more_token_sha256: Vec::new(),
        };
        Ok(Started {
            record,
            token,
            exit: spawned.exit,
        })
    }

    /// Waits until the browser answers DevTools (or exits, or the launch
    /// timeout passes), then marks the session active and composes its
    /// ready reply.
    async fn wait_ready(
        &self,
        id: &SessionId,
        port: Port,
        mut exit: ExitWatch,
    ) -> Result<Reply, String> {
        let ready = tokio::select! {
            ready = self.devtools.wait_ready(port, self.settings.launch_timeout) => ready.map_err(|e| e.to_string()),
            code = exit.wait() => Err(format!("browser exited during start: {code:?}")),
        };
        let version = ready?;
        let browser_path = version.browser_path().unwrap_or_default().to_owned();
        let session = self.sessions.activate(id, port, browser_path)?;
        Ok(self.outbox.ready(&session))
    }
}
