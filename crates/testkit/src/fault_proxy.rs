//! A small HTTP/1.1 proxy between the SDK and moto that injects faults: it
//! answers chosen requests itself (a throttling error, a 5xx, a capacity
//! error), drops their connection, or stalls them, and forwards everything
//! else to moto untouched. It runs on its own thread and runtime for the life
//! of the test binary.
//!
//! A rule matches on the operation (`Action=` of a query-protocol body, or the
//! `X-Amz-Target` of a JSON-protocol request) and a string the request must
//! contain (a queue name, a fleet uid), so tests running in parallel never
//! trip over each other's faults.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::moto;

/// What the proxy does to one matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status, content type and body instead of moto.
    Respond {
        /// HTTP status.
        status: u16,
        /// Content-Type header.
        content_type: &'static str,
        body: String,
    },
    /// Close the connection without answering.
    Drop,
    /// Wait this long, then forward.
    Stall(Duration),
}

impl Fault {
    /// An SQS (JSON protocol) error.
    pub fn sqs_error(status: u16, code: &str, message: &str) -> Fault {
        Fault::Respond {
            status,
            content_type: "application/x-amz-json-1.0",
            body: format!(r#"{{"__type":"com.amazonaws.sqs#{code}","message":"{message}"}}"#),
        }
    }

    /// An EC2 (query protocol) error.
    pub fn ec2_error(status: u16, code: &str, message: &str) -> Fault {
        Fault::Respond {
            status,
            content_type: "text/xml;charset=UTF-8",
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
                 <Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
            ),
        }
    }
}

struct Rule {
    operation: String,
    needle: String,
    faults: VecDeque<Fault>,
    seen: usize,
}

/// A rule the test installed; tells how many requests matched it.
#[derive(Clone)]
pub struct RuleHandle {
    index: usize,
    proxy: &'static FaultProxy,
}

impl RuleHandle {
    /// Requests that matched the rule so far, faulted or forwarded.
    pub fn seen(&self) -> usize {
        self.proxy
            .rules
            .lock()
            .map(|rules| rules[self.index].seen)
            .unwrap_or(0)
    }
}

/// The proxy of this test binary.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT` of the proxy.
    pub endpoint: String,
    rules: Arc<Mutex<Vec<Rule>>>,
}

impl FaultProxy {
    /// Applies `faults`, in order, to requests of `operation` that contain
    /// `needle`; once they are used up, such requests are forwarded.
    pub fn inject(&'static self, operation: &str, needle: &str, faults: Vec<Fault>) -> RuleHandle {
        let mut rules = match self.rules.lock() {
            Ok(rules) => rules,
            Err(poisoned) => poisoned.into_inner(),
        };
        rules.push(Rule {
            operation: operation.to_owned(),
            needle: needle.to_owned(),
            faults: faults.into(),
            seen: 0,
        });
        RuleHandle {
            index: rules.len() - 1,
            proxy: self,
        }
    }

    fn fault_for(&self, operation: &str, request: &[u8]) -> Option<Fault> {
        let text = String::from_utf8_lossy(request);
        let mut rules = self.rules.lock().ok()?;
        let rule = rules
            .iter_mut()
            .find(|r| r.operation == operation && text.contains(&r.needle))?;
        rule.seen += 1;
        rule.faults.pop_front()
    }
}

static PROXY: OnceLock<FaultProxy> = OnceLock::new();

/// The proxy of this binary, started on first use in front of its moto; the
/// SDK's environment points at the proxy.
pub fn proxy() -> &'static FaultProxy {
    let proxy = PROXY.get_or_init(|| {
        let upstream = moto::moto()
            .endpoint
            .trim_start_matches("http://")
            .to_owned();
        let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(listener) => listener,
            Err(e) => panic!("binding the fault proxy: {e}"),
        };
        let port = match listener.local_addr() {
            Ok(addr) => addr.port(),
            Err(e) => panic!("fault proxy address: {e}"),
        };
        let rules = Arc::new(Mutex::new(Vec::new()));
        let proxy = FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            rules,
        };
        std::thread::spawn(move || serve(listener, upstream));
        proxy
    });
    moto::use_endpoint(&proxy.endpoint);
    proxy
}

fn serve(listener: std::net::TcpListener, upstream: String) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => panic!("fault proxy runtime: {e}"),
    };
    runtime.block_on(async move {
        if listener.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let _ = handle(client, &upstream).await;
            });
        }
    });
}

/// One request read off a connection: its bytes, and where the body starts.
struct Request {
    bytes: Vec<u8>,
    head_len: usize,
}

async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<Request>> {
    loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            let head_len = end + 4;
            let head = String::from_utf8_lossy(&buffer[..head_len]).to_ascii_lowercase();
            let body_len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buffer.len() < head_len + body_len {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let bytes: Vec<u8> = buffer.drain(..head_len + body_len).collect();
            return Ok(Some(Request { bytes, head_len }));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn operation_of(request: &Request) -> String {
    let head = String::from_utf8_lossy(&request.bytes[..request.head_len]);
    for line in head.lines() {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("x-amz-target")
        {
            return value
                .trim()
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    }
    let body = String::from_utf8_lossy(&request.bytes[request.head_len..]);
    body.split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or_default()
        .to_owned()
}

async fn handle(mut client: TcpStream, upstream: &str) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    while let Some(request) = read_request(&mut client, &mut buffer).await? {
        let operation = operation_of(&request);
        let fault = PROXY
            .get()
            .and_then(|p| p.fault_for(&operation, &request.bytes));
        match fault {
            Some(Fault::Drop) => return Ok(()),
            Some(Fault::Respond {
                status,
                content_type,
                body,
            }) => {
                let response = format!(
                    "HTTP/1.1 {status} Injected\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                client.write_all(response.as_bytes()).await?;
            }
            Some(Fault::Stall(delay)) => {
                tokio::time::sleep(delay).await;
                let response = forward(&request, upstream).await?;
                client.write_all(&response).await?;
            }
            None => {
                let response = forward(&request, upstream).await?;
                client.write_all(&response).await?;
            }
        }
    }
    Ok(())
}

/// Sends one request to moto on a fresh connection and returns its response,
/// with an exact Content-Length so the client can keep its connection.
async fn forward(request: &Request, upstream: &str) -> std::io::Result<Vec<u8>> {
    let head = String::from_utf8_lossy(&request.bytes[..request.head_len]);
    let mut rewritten = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let is_connection = line
            .split_once(':')
            .is_some_and(|(name, _)| name.eq_ignore_ascii_case("connection"));
        if !is_connection {
            rewritten.push_str(line);
            rewritten.push_str("\r\n");
        }
    }
    rewritten.push_str("connection: close\r\n\r\n");
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(rewritten.as_bytes()).await?;
    server.write_all(&request.bytes[request.head_len..]).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;

    let Some(end) = find(&response, b"\r\n\r\n") else {
        return Ok(response);
    };
    let head = String::from_utf8_lossy(&response[..end]);
    let body = &response[end + 4..];
    let mut out = String::new();
    for line in head.split("\r\n") {
        let name = line
            .split_once(':')
            .map(|(n, _)| n.trim().to_ascii_lowercase());
        match name.as_deref() {
            Some("content-length") | Some("connection") | Some("transfer-encoding") => {}
            _ => {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Ok(bytes)
}
