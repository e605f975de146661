//! The proxy a session's browser sends its traffic through, and the shapes a
//! request may give it in.

use crate::secret::SecretValue;
use serde::Serialize;
use serde_json::Value;

/// Longest proxy server (`scheme://host:port`).
pub const MAX_PROXY_SERVER_LEN: usize = 512;
/// Longest proxy bypass list.
pub const MAX_PROXY_BYPASS_LEN: usize = 4096;
/// Longest proxy user name or password.
pub const MAX_PROXY_CREDENTIAL_LEN: usize = 256;

/// A proxy for the browser's traffic, in the shape Playwright uses.
///
/// `Debug` never shows the password, and no error of this module repeats any
/// part of a proxy: a proxy URL may carry credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// `scheme://host[:port]` with the scheme one of `http`, `https`, `socks4`
    /// and `socks5`, in lower case; `http` when the request named none.
    pub server: String,
    /// Hosts reached directly, in Chromium's `--proxy-bypass-list` syntax
    /// (entries separated by `;` or `,`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bypass: Option<String>,
    /// User name for proxy authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for proxy authentication; only with a user name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretValue>,
    /// User name and password sealed to the fleet
    /// ([`crate::protocol::sealing`]): what the operator sends instead of
    /// the two in clear. Never together with them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed_credentials: Option<String>,
}

/// The plaintext of [`ProxyConfig::sealed_credentials`].
#[derive(serde::Deserialize, Serialize)]
struct Credentials {
    username: String,
    password: String,
}

/// Why a proxy was refused: the field (relative to the proxy, e.g. `server`
/// or `username`; empty for the proxy as a whole) and what it must look like.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProxyError {
    pub(crate) field: &'static str,
    pub(crate) message: &'static str,
}

impl ProxyConfig {
    /// The proxy's host and port (the scheme's default port when `server`
    /// names none): where the agent's egress checks and chains go.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let server = self.server.as_str();
        let (scheme, rest) = server.split_once("://")?;
        let authority = rest.split('/').next()?;
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let default_port = match scheme {
            "https" => 443,
            "socks4" | "socks5" => 1080,
            _ => 80,
        };
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']')?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        (!host.is_empty()).then(|| (host.to_owned(), port))
    }

    /// Replaces a user name and password with their sealed form, for
    /// session `session` of the fleet with `fleet_key`; nothing to do
    /// without a user name.
    pub fn seal_credentials(
        &mut self,
        fleet_key: &[u8],
        session: &str,
    ) -> Result<(), super::sealing::SealError> {
        let Some(username) = self.username.take() else {
            return Ok(());
        };
        let password = self.password.take();
        let plain = serde_json::to_vec(&Credentials {
            username,
            password: password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
        })
        .map_err(|_| super::sealing::SealError::Malformed)?;
        self.sealed_credentials = Some(super::sealing::seal(fleet_key, session, &plain)?);
        Ok(())
    }

    /// Opens sealed credentials into the user name and password; nothing
    /// to do when none are sealed.
    pub fn open_credentials(
        &mut self,
        fleet_key: &[u8],
        session: &str,
    ) -> Result<(), super::sealing::SealError> {
        let Some(sealed) = self.sealed_credentials.take() else {
            return Ok(());
        };
        let plain = super::sealing::open(fleet_key, session, &sealed)?;
        let credentials: Credentials =
            serde_json::from_slice(&plain).map_err(|_| super::sealing::SealError::Malformed)?;
        self.username = Some(credentials.username);
        self.password =
            (!credentials.password.is_empty()).then(|| SecretValue::new(credentials.password));
        Ok(())
    }

    /// Reads a proxy from a request, in one of these shapes:
    /// * a string: `host:port`, `scheme://host:port`, either with
    ///   `user:password@` before the host (taken verbatim, not
    ///   percent-decoded);
    /// * an object `{"server", "bypass"?, "username"?, "password"?}`, where
    ///   `server` is such a string and `bypass` a string or an array of
    ///   strings (joined with `;`);
    /// * an object with `host` and `port` instead of `server`, as the legacy
    ///   launcher's producers write it.
    pub(crate) fn from_value(value: &Value) -> Result<ProxyConfig, ProxyError> {
        match value {
            Value::String(server) => {
                let parsed = parse_server(server)?;
                Ok(ProxyConfig {
                    server: parsed.server,
                    bypass: None,
                    username: parsed.username,
                    password: parsed.password,
                    sealed_credentials: None,
                })
            }
            Value::Object(map) => from_object(map),
            _ => Err(ProxyError {
                field: "",
                message: "must be a string (host:port) or an object with server",
            }),
        }
    }
}

fn from_object(map: &serde_json::Map<String, Value>) -> Result<ProxyConfig, ProxyError> {
    let server_text = match (non_null(map, "server"), non_null(map, "host")) {
        (Some(Value::String(server)), _) => server.clone(),
        (Some(_), _) => return Err(err("server", "must be a string")),
        (None, Some(Value::String(host))) => match non_null(map, "port") {
            None => host.clone(),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|p| (1..=65535).contains(&p)) => {
                format!("{host}:{n}")
            }
            Some(_) => return Err(err("port", "must be a number from 1 to 65535")),
        },
        (None, Some(_)) => return Err(err("host", "must be a string")),
        (None, None) => return Err(err("server", "is required")),
    };
    let parsed = parse_server(&server_text)?;
    let username = credential(map, "username")?;
    let password = credential(map, "password")?.map(SecretValue::new);
    let (username, password) = match (username, password, parsed.username) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err(err(
                "server",
                "names credentials in the URL and in username/password; use one",
            ));
        }
        (None, None, in_url) => (in_url, parsed.password),
        (user, pass, None) => (user, pass),
    };
    if password.is_some() && username.is_none() {
        return Err(err("password", "needs a username"));
    }
    let sealed_credentials = match non_null(map, "sealedCredentials") {
        None => None,
        Some(_) if username.is_some() => {
            return Err(err(
                "sealedCredentials",
                "comes instead of username and password, not with them",
            ));
        }
        Some(Value::String(s))
            if s.starts_with(super::sealing::SEALED_PREFIX)
                && s.len() <= super::sealing::MAX_SEALED_LEN =>
        {
            Some(s.clone())
        }
        Some(_) => {
            return Err(err(
                "sealedCredentials",
                "must be a sealed value (bfs1.…) of at most 4096 bytes",
            ));
        }
    };
    Ok(ProxyConfig {
        server: parsed.server,
        bypass: bypass(map)?,
        username,
        password,
        sealed_credentials,
    })
}

fn err(field: &'static str, message: &'static str) -> ProxyError {
    ProxyError { field, message }
}

/// The value under `key`, treating `null` as absent.
fn non_null<'a>(map: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn credential(
    map: &serde_json::Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, ProxyError> {
    match non_null(map, key) {
        None => Ok(None),
        Some(Value::String(s)) if is_credential(s) => Ok(Some(s.clone())),
        Some(_) => Err(err(
            key,
            "must be a string of 1 to 256 characters without control characters",
        )),
    }
}

fn is_credential(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= MAX_PROXY_CREDENTIAL_LEN
        && !s.chars().any(char::is_control)
}

fn bypass(map: &serde_json::Map<String, Value>) -> Result<Option<String>, ProxyError> {
    let refused = err(
        "bypass",
        "must be a string or an array of strings, without whitespace, at most 4096 bytes",
    );
    let joined = match non_null(map, "bypass") {
        None => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            let mut entries = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) if !s.is_empty() && !s.contains([';', ',']) => {
                        entries.push(s.as_str())
                    }
                    _ => return Err(refused),
                }
            }
            entries.join(";")
        }
        Some(_) => return Err(refused),
    };
    if joined.len() > MAX_PROXY_BYPASS_LEN
        || joined.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(refused);
    }
    Ok((!joined.is_empty()).then_some(joined))
}

/// A proxy server string taken apart.
struct ParsedServer {
    server: String,
    username: Option<String>,
    password: Option<SecretValue>,
}

const SERVER_SHAPE: &str =
    "must be host:port or scheme://host:port with scheme http, https, socks4 or socks5";

/// Parses `[scheme://][user[:password]@]host[:port][/]` into a normalized
/// `scheme://host[:port]` and the credentials, if any.
fn parse_server(text: &str) -> Result<ParsedServer, ProxyError> {
    let refused = err("server", SERVER_SHAPE);
    if text.is_empty()
        || text.len() > MAX_PROXY_SERVER_LEN
        || text.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(refused);
    }
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_owned(), text),
    };
    if !matches!(scheme.as_str(), "http" | "https" | "socks4" | "socks5") {
        return Err(refused);
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, host_port) = match rest.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, rest),
    };
    if !is_host_port(host_port) {
        return Err(refused);
    }
    let (username, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => {
            let (user, pass) = match userinfo.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (userinfo, None),
            };
            if !is_credential(user) || pass.is_some_and(|p| !is_credential(p)) {
                return Err(err("server", "has a malformed user:password@ part"));
            }
            (Some(user.to_owned()), pass.map(SecretValue::new))
        }
    };
    Ok(ParsedServer {
        server: format!("{scheme}://{host_port}"),
        username,
        password,
    })
}

/// `host`, `host:port`, `[ipv6]` or `[ipv6]:port`, with a host name of
/// letters, digits, `.`, `-` and `_`, and a port from 1 to 65535.
fn is_host_port(host_port: &str) -> bool {
    let (host, port) = if let Some(after) = host_port.strip_prefix('[') {
        let Some((inside, tail)) = after.split_once(']') else {
            return false;
        };
        let ipv6 = !inside.is_empty()
            && inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !ipv6 {
            return false;
        }
        match tail {
            "" => (inside, None),
            _ => match tail.strip_prefix(':') {
                Some(port) => (inside, Some(port)),
                None => return false,
            },
        }
    } else {
        let (host, port) = match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        };
        let name_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !name_ok {
            return false;
        }
        (host, port)
    };
    !host.is_empty()
        && port.is_none_or(|p| {
            !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn proxy(value: Value) -> Result<ProxyConfig, ProxyError> {
        ProxyConfig::from_value(&value)
    }

    fn server_only(server: &str) -> ProxyConfig {
        ProxyConfig {
            server: server.into(),
            bypass: None,
            username: None,
            password: None,
            sealed_credentials: None,
        }
    }

    #[test]
    fn a_bare_host_and_port_gets_the_http_scheme() {
        assert_eq!(
            proxy(json!("proxy.internal:3128")),
            Ok(server_only("http://proxy.internal:3128"))
        );
        assert_eq!(
            proxy(json!("SOCKS5://10.0.0.5:1080/")),
            Ok(server_only("socks5://10.0.0.5:1080"))
        );
        assert_eq!(
            proxy(json!("[fd00::1]:8080")),
            Ok(server_only("http://[fd00::1]:8080"))
        );
    }

    #[test]
    fn credentials_in_the_url_move_to_their_own_fields() {
        let parsed = proxy(json!("http://alice:s3cr@t@proxy:3128")).expect("valid");
        assert_eq!(parsed.server, "http://proxy:3128");
        assert_eq!(parsed.username.as_deref(), Some("alice"));
        assert_eq!(
            parsed.password.as_ref().map(SecretValue::expose),
            Some("s3cr@t")
        );
    }

    #[test]
    fn the_playwright_object_shape_is_read_field_by_field() {
        let parsed = proxy(json!({
            "server": "https://proxy:443",
            "bypass": ["localhost", "*.internal"],
            "username": "bob",
            "password": "pw",
            "somethingNew": true,
        }))
        .expect("valid");
        assert_eq!(
            parsed,
            ProxyConfig {
                server: "https://proxy:443".into(),
                bypass: Some("localhost;*.internal".into()),
                username: Some("bob".into()),
                password: Some(SecretValue::new("pw")),
                sealed_credentials: None,
            }
        );
        let string_bypass = proxy(json!({"server": "p:1", "bypass": "a;b"})).expect("valid");
        assert_eq!(string_bypass.bypass.as_deref(), Some("a;b"));
    }

    #[test]
    fn host_and_port_fields_are_an_alternative_to_server() {
        assert_eq!(
            proxy(json!({"host": "proxy", "port": 8080})),
            Ok(server_only("http://proxy:8080"))
        );
        assert_eq!(
            proxy(json!({"host": "proxy", "port": 0})).map_err(|e| e.field),
            Err("port")
        );
    }

    #[test]
    fn malformed_proxies_are_refused_without_repeating_them() {
        for value in [
            json!(""),
            json!("ftp://proxy:21"),
            json!("proxy:0"),
            json!("proxy:70000"),
            json!("proxy:port"),
            json!("proxy/path"),
            json!("pro xy:1"),
            json!("[zz::1]:1"),
            json!("user:@proxy:1"),
            json!(42),
            json!({}),
            json!({"server": 1}),
            json!({"server": "p:1", "password": "only"}),
            json!({"server": "u:p@p:1", "username": "u"}),
            json!({"server": "p:1", "bypass": [1]}),
            json!({"server": "p:1", "bypass": "a b"}),
            json!({"server": "p:1", "username": ""}),
        ] {
            let error = proxy(value.clone()).expect_err("invalid");
            assert!(!error.message.contains("proxy:"), "{value}");
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let parsed = proxy(json!("http://alice:hunter2@proxy:3128")).expect("valid");
        let shown = format!("{parsed:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }

    #[test]
    fn a_proxy_address_is_read_with_its_schemes_default_port() {
        let address = |s: &str| {
            ProxyConfig {
                server: s.into(),
                bypass: None,
                username: None,
                password: None,
                sealed_credentials: None,
            }
            .host_port()
        };
        assert_eq!(
            address("http://p.example:3128"),
            Some(("p.example".into(), 3128))
        );
        assert_eq!(
            address("http://u:pw@p.example"),
            Some(("p.example".into(), 80))
        );
        assert_eq!(
            address("socks5://10.0.0.5"),
            Some(("10.0.0.5".into(), 1080))
        );
        assert_eq!(
            address("https://[fd00::1]:8443/"),
            Some(("fd00::1".into(), 8443))
        );
        assert_eq!(address("p.example:3128"), None);
        assert_eq!(address("http://:80"), None);
    }
}
