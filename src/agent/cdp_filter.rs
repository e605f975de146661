//! The CDP command filter of the DevTools gateway: what a client holding a
//! session token may ask of its browser. A client may be untrusted code; the
//! browser runs as the agent's user, behind the agent's egress proxy. The
//! filter keeps the client from reading files outside its session and from
//! leaving the egress proxy.
//!
//! [`judge`] decides one command, from its method and params alone;
//! [`filter_message`] applies it to one websocket message from the client.
//! The rules:
//!
//! * `Target.createBrowserContext` with `proxyServer` or `proxyBypassList`
//!   is refused: a context with a proxy of its own would leave the egress
//!   proxy.
//! * The URL given to `Page.navigate`, `Target.createTarget` and
//!   `Network.loadNetworkResource` must be `http`, `https`, `data`, `blob`,
//!   `javascript`, or `about:blank` / `about:srcdoc` (other `about:` URLs are
//!   rewritten by Chromium to `chrome:` pages); an empty URL (Chromium's
//!   `about:blank`) passes. The scheme is read as a browser reads it: case
//!   ignored, leading and trailing spaces and control characters trimmed,
//!   tabs and line breaks anywhere removed. `file:`, `chrome:`,
//!   `chrome-untrusted:`, `devtools:`, `view-source:`, `chrome-extension:`,
//!   `filesystem:` and anything else are refused, as is a URL without a
//!   scheme.
//! * The `url` of `Fetch.continueRequest` and
//!   `Network.continueInterceptedRequest` must be `http`, `https`, `ws` or
//!   `wss`.
//! * `Browser.setDownloadBehavior` and `Page.setDownloadBehavior`: `allow`
//!   and `allowAndName` are rewritten with `downloadPath` set to the
//!   session's downloads directory, `default` becomes `allow` there; `deny`
//!   passes unchanged; other params (`browserContextId`, `eventsEnabled`) are
//!   kept; any other behaviour is refused.
//! * `DOM.setFileInputFiles` (`files`) and `Input.dispatchDragEvent`
//!   (`data.files`): every path must be absolute, without a `..` component,
//!   and inside the session's downloads directory, compared lexically.
//! * `Target.sendMessageToTarget` (it carries a command the filter would not
//!   see; clients use flattened sessions instead),
//!   `Target.exposeDevToolsProtocol` (it hands CDP to page scripts, around
//!   the filter), `Target.openDevTools` (a DevTools front-end speaks CDP
//!   around the filter), and every `Extensions.*` and `PWA.*` method are
//!   refused.
//! * Everything else passes.
//!
//! A message is judged whatever its `sessionId`: a flattened session's
//! commands for other targets come on the same websocket. A message that is
//! not JSON the filter can read is refused, not passed: a message the
//! browser's parser reads differently (nesting deeper than serde_json's
//! limit, a number out of range) would otherwise reach it unjudged. For the
//! same reason, every message that passes is sent re-serialized from what
//! was judged (one `method`, one `url`, whatever duplicate keys the client
//! wrote).

use std::path::{Component, Path};

use serde_json::{Map, Value};

use super::session_files::SessionFiles;

/// The start of every refusal message, so a client's developer knows who
/// refused.
const POLICY: &str = "refused by browserfleet's session policy";
/// The longest piece of client input quoted in a refusal.
const MAX_QUOTED: usize = 200;
/// The CDP error code of a refused command (Chromium's "server error").
const CDP_SERVER_ERROR: i64 = -32000;

/// Schemes a page may be navigated or a target opened to.
const NAVIGATION_SCHEMES: &[&str] = &["http", "https", "data", "blob", "javascript"];
/// The `about:` URLs that stay `about:` (Chromium rewrites the others to
/// `chrome:` pages).
const ABOUT_URLS: &[&str] = &["about:blank", "about:srcdoc"];
/// Schemes an intercepted request may be redirected to.
const REQUEST_SCHEMES: &[&str] = &["http", "https", "ws", "wss"];
/// Methods refused whatever their params.
const REFUSED_METHODS: &[&str] = &[
    "Target.sendMessageToTarget",
    "Target.exposeDevToolsProtocol",
    "Target.openDevTools",
];
/// Domains refused whole.
const REFUSED_DOMAINS: &[&str] = &["Extensions", "PWA"];
/// Methods whose params the filter reads; with the refused ones, the only
/// values of the refusal counter's `method` label.
const JUDGED_METHODS: &[&str] = &[
    "Target.createBrowserContext",
    "Page.navigate",
    "Target.createTarget",
    "Network.loadNetworkResource",
    "Fetch.continueRequest",
    "Network.continueInterceptedRequest",
    "Browser.setDownloadBehavior",
    "Page.setDownloadBehavior",
    "DOM.setFileInputFiles",
    "Input.dispatchDragEvent",
];

/// What the gateway does with one command.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Send it to the browser as it is.
    Forward,
    /// Send it with these params instead.
    Rewrite(Value),
    /// Answer the client with a CDP error; the browser never sees it.
    Refuse(Refusal),
}

/// Why a command was refused; the message is what the client reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A browser context with its own proxy.
    #[error(
        "{POLICY}: a browser context may not set proxyServer or proxyBypassList (the session's traffic goes through the node's egress proxy)"
    )]
    ContextProxy,
    /// A URL whose scheme the method may not load.
    #[error("{POLICY}: {method} may not load {url:?}; allowed: {allowed}")]
    Scheme {
        /// The command.
        method: &'static str,
        /// The URL, shortened.
        url: String,
        /// The schemes it may load, for the client's developer.
        allowed: &'static str,
    },
    /// A download behaviour the filter does not know.
    #[error("{POLICY}: unknown download behavior {behavior:?}")]
    DownloadBehavior {
        /// The behaviour, shortened.
        behavior: String,
    },
    /// A file path that is not inside the session's downloads directory.
    #[error(
        "{POLICY}: files must be absolute paths inside the session's downloads directory {downloads}, without '..'; got {path:?}"
    )]
    FileOutsideSession {
        /// The path, shortened (or a description of what was not a path).
        path: String,
        /// The session's downloads directory.
        downloads: String,
    },
    /// A method refused whatever its params.
    #[error("{POLICY}: {method} is not available through the gateway")]
    Method {
        /// The method, shortened.
        method: String,
    },
    /// A message that is not JSON the filter can read.
    #[error("{POLICY}: the message is not JSON the gateway can read")]
    Unreadable,
}

/// Judges one command of a client of the session whose files are `files`.
pub fn judge(method: &str, params: Option<&Value>, files: &SessionFiles) -> Verdict {
    let param = |name: &str| params.and_then(|p| p.get(name));
    let verdict = match method {
        "Target.createBrowserContext" => {
            if param("proxyServer").is_some() || param("proxyBypassList").is_some() {
                Err(Refusal::ContextProxy)
            } else {
                Ok(())
            }
        }
        "Page.navigate" => navigation_url(param("url"), "Page.navigate"),
        "Target.createTarget" => navigation_url(param("url"), "Target.createTarget"),
        "Network.loadNetworkResource" => {
            navigation_url(param("url"), "Network.loadNetworkResource")
        }
        "Fetch.continueRequest" => request_url(param("url"), "Fetch.continueRequest"),
        "Network.continueInterceptedRequest" => {
            request_url(param("url"), "Network.continueInterceptedRequest")
        }
        "Browser.setDownloadBehavior" | "Page.setDownloadBehavior" => {
            return download_behavior(params, files);
        }
        "DOM.setFileInputFiles" => session_paths(param("files"), files),
        "Input.dispatchDragEvent" => {
            session_paths(param("data").and_then(|d| d.get("files")), files)
        }
        _ if is_refused_method(method) => Err(Refusal::Method {
            method: shorten(method),
        }),
        _ => Ok(()),
    };
    match verdict {
        Ok(()) => Verdict::Forward,
        Err(refusal) => Verdict::Refuse(refusal),
    }
}

fn is_refused_method(method: &str) -> bool {
    REFUSED_METHODS.contains(&method)
        || method
            .split_once('.')
            .is_some_and(|(domain, _)| REFUSED_DOMAINS.contains(&domain))
}

/// The value of the refusal counter's `method` label for a refused
/// `method`: the method when the filter knows it, `Extensions.*` or `PWA.*`
/// for those domains, `unreadable` for a message without one, so that a
/// client cannot grow the counter's series.
pub fn metric_method(method: Option<&str>) -> &'static str {
    let Some(method) = method else {
        return "unreadable";
    };
    if let Some(known) = JUDGED_METHODS
        .iter()
        .chain(REFUSED_METHODS)
        .find(|known| **known == method)
    {
        return known;
    }
    match method.split_once('.') {
        Some(("Extensions", _)) => "Extensions.*",
        Some(("PWA", _)) => "PWA.*",
        _ => "other",
    }
}

/// The scheme of `url` as a browser parses it (lowercase), or `None` when
/// it has none.
fn scheme_of(url: &str) -> Option<String> {
    // WHATWG URL parsing: strip leading and trailing C0 controls and spaces,
    // remove every tab and line break.
    let cleaned: String = url
        .trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let (scheme, _) = cleaned.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| scheme.to_ascii_lowercase())
}

/// Whether `url` is one of [`ABOUT_URLS`], query and fragment aside.
fn is_plain_about(url: &str) -> bool {
    let cleaned: String = url
        .trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect::<String>()
        .to_ascii_lowercase();
    let page = cleaned.split(['?', '#']).next().unwrap_or_default();
    ABOUT_URLS.contains(&page)
}

/// Checks a URL a page or target loads. An absent or non-string URL passes:
/// the browser refuses it itself.
fn navigation_url(url: Option<&Value>, method: &'static str) -> Result<(), Refusal> {
    let Some(Value::String(url)) = url else {
        return Ok(());
    };
    if url.trim_matches(|c: char| c <= ' ').is_empty() {
        return Ok(());
    }
    let allowed = match scheme_of(url).as_deref() {
        Some("about") => is_plain_about(url),
        Some(scheme) => NAVIGATION_SCHEMES.contains(&scheme),
        None => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Refusal::Scheme {
            method,
            url: shorten(url),
            allowed: "http, https, data, blob, javascript, about:blank, about:srcdoc",
        })
    }
}

/// Checks the URL an intercepted request is sent on to.
fn request_url(url: Option<&Value>, method: &'static str) -> Result<(), Refusal> {
    let Some(Value::String(url)) = url else {
        return Ok(());
    };
    if scheme_of(url).is_some_and(|s| REQUEST_SCHEMES.contains(&s.as_str())) {
        Ok(())
    } else {
        Err(Refusal::Scheme {
            method,
            url: shorten(url),
            allowed: "http, https, ws, wss",
        })
    }
}

/// Points a download behaviour at the session's downloads directory.
fn download_behavior(params: Option<&Value>, files: &SessionFiles) -> Verdict {
    let Some(Value::Object(params)) = params else {
        // No behaviour: the browser refuses the command itself.
        return Verdict::Forward;
    };
    let behavior = match params.get("behavior") {
        Some(Value::String(behavior)) => behavior.as_str(),
        // Absent or not a string: the browser refuses the command itself.
        _ => return Verdict::Forward,
    };
    let confined = match behavior {
        "deny" => return Verdict::Forward,
        "allow" | "default" => "allow",
        "allowAndName" => "allowAndName",
        other => {
            return Verdict::Refuse(Refusal::DownloadBehavior {
                behavior: shorten(other),
            });
        }
    };
    let mut rewritten: Map<String, Value> = params.clone();
    rewritten.insert("behavior".into(), Value::String(confined.into()));
    rewritten.insert(
        "downloadPath".into(),
        Value::String(files.downloads.to_string_lossy().into_owned()),
    );
    Verdict::Rewrite(Value::Object(rewritten))
}

/// Checks that every path of `paths` (when given) is inside the session's
/// downloads directory.
fn session_paths(paths: Option<&Value>, files: &SessionFiles) -> Result<(), Refusal> {
    let outside = |path: String| Refusal::FileOutsideSession {
        path,
        downloads: files.downloads.display().to_string(),
    };
    let Some(paths) = paths else {
        return Ok(());
    };
    let Value::Array(paths) = paths else {
        return Err(outside("(not a list of paths)".into()));
    };
    for path in paths {
        let Value::String(path) = path else {
            return Err(outside("(not a path)".into()));
        };
        if !inside(Path::new(path), &files.downloads) {
            return Err(outside(shorten(path)));
        }
    }
    Ok(())
}

/// Whether `path` is lexically inside `dir`: absolute, no `..`, and under
/// it component by component.
fn inside(path: &Path, dir: &Path) -> bool {
    path.is_absolute()
        && !path.components().any(|c| c == Component::ParentDir)
        && path.starts_with(dir)
        && path != dir
}

/// At most [`MAX_QUOTED`] characters of client input, for a message.
fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(MAX_QUOTED).collect();
    short.push('…');
    short
}

/// What the gateway does with one message from the client.
#[derive(Clone, Debug, PartialEq)]
pub enum Filtered {
    /// Send this text to the browser: the message, re-serialized, with its
    /// params rewritten when the verdict said so.
    Forward(String),
    /// Send this CDP error to the client instead.
    Answer {
        /// The error message, with the command's `id` and `sessionId`.
        text: String,
        /// The refusal counter's label ([`metric_method`]).
        method: &'static str,
    },
}

/// Applies [`judge`] to one websocket message from a client.
pub fn filter_message(text: &str, files: &SessionFiles) -> Filtered {
    let Ok(mut message) = serde_json::from_str::<Value>(text) else {
        return refused(&Value::Null, &Refusal::Unreadable, None);
    };
    let verdict = match message.get("method") {
        Some(Value::String(method)) => judge(method, message.get("params"), files),
        // No method: nothing runs; the browser answers its own error.
        _ => Verdict::Forward,
    };
    match verdict {
        Verdict::Forward => Filtered::Forward(message.to_string()),
        Verdict::Rewrite(params) => {
            if let Some(fields) = message.as_object_mut() {
                fields.insert("params".into(), params);
            }
            Filtered::Forward(message.to_string())
        }
        Verdict::Refuse(refusal) => {
            let method = message.get("method").and_then(Value::as_str);
            refused(&message, &refusal, method)
        }
    }
}

/// The CDP error answering `message`, with its `id` and `sessionId`.
fn refused(message: &Value, refusal: &Refusal, method: Option<&str>) -> Filtered {
    let mut answer = Map::new();
    if let Some(id) = message.get("id") {
        answer.insert("id".into(), id.clone());
    }
    if let Some(session) = message.get("sessionId") {
        answer.insert("sessionId".into(), session.clone());
    }
    answer.insert(
        "error".into(),
        serde_json::json!({"code": CDP_SERVER_ERROR, "message": refusal.to_string()}),
    );
    Filtered::Answer {
        text: Value::Object(answer).to_string(),
        method: metric_method(method),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn files() -> SessionFiles {
        SessionFiles {
            downloads: std::env::temp_dir().join("profiles/tmp/s-1/Downloads"),
        }
    }

    fn verdict(method: &str, params: Value) -> Verdict {
        judge(method, Some(&params), &files())
    }

    fn refused(method: &str, params: Value) -> bool {
        matches!(verdict(method, params), Verdict::Refuse(_))
    }

    #[test]
    fn a_browser_context_with_its_own_proxy_is_refused() {
        for params in [
            json!({"proxyServer": "http://evil:8080"}),
            json!({"proxyBypassList": "*"}),
            json!({"proxyServer": "", "disposeOnDetach": true}),
        ] {
            assert_eq!(
                verdict("Target.createBrowserContext", params),
                Verdict::Refuse(Refusal::ContextProxy)
            );
        }
        assert_eq!(
            verdict(
                "Target.createBrowserContext",
                json!({"disposeOnDetach": true})
            ),
            Verdict::Forward
        );
        assert_eq!(
            judge("Target.createBrowserContext", None, &files()),
            Verdict::Forward
        );
    }

    #[test]
    fn pages_load_web_urls_only() {
        for method in [
            "Page.navigate",
            "Target.createTarget",
            "Network.loadNetworkResource",
        ] {
            for url in [
                "https://example.com/",
                "HTTP://example.com",
                "  http://example.com  ",
                "data:text/html,<p>hi</p>",
                "blob:https://example.com/0f3c",
                "javascript:void(0)",
                "about:blank",
                "About:Blank#x",
                "about:srcdoc",
                "",
            ] {
                assert_eq!(
                    verdict(method, json!({"url": url})),
                    Verdict::Forward,
                    "{method} {url}"
                );
            }
        }
    }

    #[test]
    fn pages_may_not_load_local_or_browser_urls() {
        for method in [
            "Page.navigate",
            "Target.createTarget",
            "Network.loadNetworkResource",
        ] {
            for url in [
                "file:///etc/passwd",
                "FILE:///etc/passwd",
                " \u{1}file:///etc/passwd",
                "fi\tle:///etc/passwd",
                "f\ni\rle:///etc/passwd",
                "chrome://settings",
                "chrome-untrusted://terminal",
                "devtools://devtools/bundled/inspector.html",
                "view-source:https://example.com",
                "chrome-extension://abc/page.html",
                "filesystem:https://example.com/temporary/x",
                "about:version",
                "about:net-internals",
                "ftp://example.com",
                "/etc/passwd",
                "example.com",
                ":nothing",
            ] {
                assert!(
                    matches!(
                        verdict(method, json!({"url": url})),
                        Verdict::Refuse(Refusal::Scheme { .. })
                    ),
                    "{method} {url:?}"
                );
            }
        }
    }

    #[test]
    fn intercepted_requests_continue_only_to_web_urls() {
        for method in [
            "Fetch.continueRequest",
            "Network.continueInterceptedRequest",
        ] {
            for url in [
                "https://a.test/",
                "http://a.test",
                "ws://a.test",
                "WSS://a.test",
            ] {
                assert_eq!(
                    verdict(method, json!({"requestId": "1", "url": url})),
                    Verdict::Forward
                );
            }
            assert_eq!(verdict(method, json!({"requestId": "1"})), Verdict::Forward);
            for url in [
                "file:///etc/passwd",
                "data:text/plain,x",
                "chrome://gpu",
                "",
            ] {
                assert!(
                    refused(method, json!({"requestId": "1", "url": url})),
                    "{method} {url:?}"
                );
            }
        }
    }

    #[test]
    fn download_behaviours_are_pointed_at_the_session_downloads() {
        let downloads = files().downloads.to_string_lossy().into_owned();
        for method in ["Browser.setDownloadBehavior", "Page.setDownloadBehavior"] {
            let cases = [
                ("allow", "allow"),
                ("allowAndName", "allowAndName"),
                ("default", "allow"),
            ];
            for (asked, given) in cases {
                let params = json!({
                    "behavior": asked,
                    "downloadPath": "/tmp",
                    "browserContextId": "CTX",
                    "eventsEnabled": true
                });
                assert_eq!(
                    verdict(method, params),
                    Verdict::Rewrite(json!({
                        "behavior": given,
                        "downloadPath": downloads,
                        "browserContextId": "CTX",
                        "eventsEnabled": true
                    })),
                    "{method} {asked}"
                );
            }
            assert_eq!(
                verdict(method, json!({"behavior": "allow"})),
                Verdict::Rewrite(json!({"behavior": "allow", "downloadPath": downloads}))
            );
        }
    }

    #[test]
    fn denying_downloads_passes_unchanged_and_unknown_behaviours_are_refused() {
        assert_eq!(
            verdict("Browser.setDownloadBehavior", json!({"behavior": "deny"})),
            Verdict::Forward
        );
        assert!(matches!(
            verdict(
                "Browser.setDownloadBehavior",
                json!({"behavior": "allowEverywhere", "downloadPath": "/"})
            ),
            Verdict::Refuse(Refusal::DownloadBehavior { .. })
        ));
    }

    #[test]
    fn file_inputs_take_files_from_the_session_downloads_only() {
        let inside = files().downloads.join("report.pdf");
        let nested = files().downloads.join("a/b.txt");
        let ok =
            json!({"files": [inside.to_string_lossy(), nested.to_string_lossy()], "nodeId": 3});
        assert_eq!(verdict("DOM.setFileInputFiles", ok), Verdict::Forward);
        assert_eq!(
            verdict("DOM.setFileInputFiles", json!({"files": []})),
            Verdict::Forward
        );
        let escape = format!("{}/../../named/shop/Cookies", files().downloads.display());
        for bad in [
            json!({"files": ["/etc/passwd"]}),
            json!({"files": [inside.to_string_lossy(), "/etc/passwd"]}),
            json!({"files": [escape]}),
            json!({"files": ["Downloads/report.pdf"]}),
            json!({"files": [files().downloads.to_string_lossy()]}),
            json!({"files": [format!("{}-evil/x", files().downloads.display())]}),
            json!({"files": [7]}),
            json!({"files": "/etc/passwd"}),
        ] {
            assert!(
                matches!(
                    verdict("DOM.setFileInputFiles", bad.clone()),
                    Verdict::Refuse(Refusal::FileOutsideSession { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn dragged_files_come_from_the_session_downloads_only() {
        let inside = files().downloads.join("a.txt");
        let drag = |files: Value| json!({"type": "drop", "x": 1, "y": 1, "data": {"items": [], "dragOperationsMask": 1, "files": files}});
        assert_eq!(
            verdict(
                "Input.dispatchDragEvent",
                drag(json!([inside.to_string_lossy()]))
            ),
            Verdict::Forward
        );
        assert!(refused(
            "Input.dispatchDragEvent",
            drag(json!(["/etc/passwd"]))
        ));
        assert_eq!(
            verdict(
                "Input.dispatchDragEvent",
                json!({"type": "dragEnter", "data": {"items": []}})
            ),
            Verdict::Forward
        );
    }

    #[test]
    fn commands_the_filter_cannot_see_into_are_refused() {
        for method in [
            "Target.sendMessageToTarget",
            "Target.exposeDevToolsProtocol",
            "Target.openDevTools",
            "Extensions.loadUnpacked",
            "Extensions.getStorageItems",
            "PWA.install",
            "PWA.launch",
        ] {
            assert!(
                matches!(
                    judge(method, None, &files()),
                    Verdict::Refuse(Refusal::Method { .. })
                ),
                "{method}"
            );
        }
    }

    #[test]
    fn everything_else_passes() {
        for method in [
            "Browser.getVersion",
            "Runtime.evaluate",
            "Target.attachToTarget",
            "Page.captureScreenshot",
            "ExtensionsX.foo",
            "Network.enable",
        ] {
            assert_eq!(
                judge(method, Some(&json!({"url": "file:///"})), &files()),
                Verdict::Forward,
                "{method}"
            );
        }
    }

    #[test]
    fn a_refusal_answers_with_the_id_session_and_policy() {
        let message =
            r#"{"id":7,"sessionId":"S1","method":"Page.navigate","params":{"url":"file:///etc"}}"#;
        let Filtered::Answer { text, method } = filter_message(message, &files()) else {
            panic!("not refused");
        };
        assert_eq!(method, "Page.navigate");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["id"], 7);
        assert_eq!(answer["sessionId"], "S1");
        assert_eq!(answer["error"]["code"], -32000);
        let text = answer["error"]["message"].as_str().unwrap();
        assert!(
            text.starts_with("refused by browserfleet's session policy: "),
            "{text}"
        );
    }

    #[test]
    fn a_rewrite_keeps_the_id_and_session() {
        let message = r#"{"id":3,"sessionId":"S","method":"Page.setDownloadBehavior","params":{"behavior":"allow","downloadPath":"/tmp"}}"#;
        let Filtered::Forward(text) = filter_message(message, &files()) else {
            panic!("refused");
        };
        let sent: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(sent["id"], 3);
        assert_eq!(sent["sessionId"], "S");
        assert_eq!(
            sent["params"]["downloadPath"],
            files().downloads.to_string_lossy().as_ref()
        );
    }

    #[test]
    fn a_message_without_a_method_passes_and_an_unreadable_one_is_refused() {
        assert_eq!(
            filter_message(r#"{"id":1}"#, &files()),
            Filtered::Forward(r#"{"id":1}"#.into())
        );
        assert_eq!(
            filter_message(r#"{"id":1,"method":5}"#, &files()),
            Filtered::Forward(r#"{"id":1,"method":5}"#.into())
        );
        let deep = format!(
            r#"{{"id":1,"method":"Page.navigate","params":{{"url":"file:///","x":{}{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for unreadable in ["not json", "{\"id\":1,", deep.as_str()] {
            let Filtered::Answer { text, method } = filter_message(unreadable, &files()) else {
                panic!("{unreadable} passed");
            };
            assert_eq!(method, "unreadable");
            assert!(text.contains("not JSON"), "{text}");
        }
    }

    #[test]
    fn duplicate_keys_reach_the_browser_as_judged() {
        // serde_json keeps the last of duplicate keys; what is sent on is
        // that one value, so the browser cannot read the other.
        let message = r#"{"id":1,"method":"Page.navigate","params":{"url":"file:///etc","url":"https://a.test/"}}"#;
        let Filtered::Forward(text) = filter_message(message, &files()) else {
            panic!("refused");
        };
        assert!(!text.contains("file:"), "{text}");
        let message = r#"{"id":1,"method":"Page.navigate","params":{"url":"https://a.test/","url":"file:///etc"}}"#;
        assert!(matches!(
            filter_message(message, &files()),
            Filtered::Answer { .. }
        ));
    }

    #[test]
    fn the_refusal_label_takes_known_values_only() {
        assert_eq!(metric_method(Some("Page.navigate")), "Page.navigate");
        assert_eq!(
            metric_method(Some("Extensions.loadUnpacked")),
            "Extensions.*"
        );
        assert_eq!(metric_method(Some("PWA.install")), "PWA.*");
        assert_eq!(metric_method(Some("Made.up")), "other");
        assert_eq!(metric_method(None), "unreadable");
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,20}".prop_map(Value::String),
            prop_oneof![
                Just("file:///etc/passwd"),
                Just("allow"),
                Just("/tmp/x"),
                Just("https://a.test")
            ]
            .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("url".to_owned()),
                        Just("files".to_owned()),
                        Just("data".to_owned()),
                        Just("behavior".to_owned()),
                        Just("proxyServer".to_owned()),
                        ".{0,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn judge_never_panics_on_arbitrary_params(
            method in prop_oneof![
                prop::sample::select(JUDGED_METHODS.iter().chain(REFUSED_METHODS).copied().collect::<Vec<_>>()).prop_map(str::to_owned),
                ".{0,30}",
            ],
            params in prop::option::of(arbitrary_json()),
        ) {
            let _ = judge(&method, params.as_ref(), &files());
            let message = json!({"id": 1, "method": method, "params": params});
            let _ = filter_message(&message.to_string(), &files());
        }
    }
}
