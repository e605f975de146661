//! An agent artifact served over loopback HTTP, as a release bucket would
//! serve it to a node's boot script.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A file served at `url` until dropped.
pub struct Artifact {
    /// Where the boot script downloads it.
    pub url: String,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
    /// The served copy.
    pub path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for Artifact {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves a copy of `binary` with `trailer` appended (an ELF runs the same
/// with bytes after its end: two versions of one build differ only there)
/// from `dir`, on 127.0.0.1. Every GET answers the whole file.
pub async fn serve(binary: &Path, trailer: &[u8], dir: &Path) -> Artifact {
    let path = dir.join(format!("browserfleet-{}", trailer.len()));
    let mut bytes = std::fs::read(binary).expect("agent binary readable");
    bytes.extend_from_slice(trailer);
    std::fs::write(&path, &bytes).expect("artifact written");
    let sha = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("sha256sum runs");
    let sha256 = String::from_utf8_lossy(&sha.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "http://{}/browserfleet",
        listener.local_addr().expect("address")
    );
    let served = std::sync::Arc::new(bytes);
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move {
                // The request is one GET; its head is all there is to read.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    served.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.write_all(&served).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Artifact {
        url,
        sha256,
        path,
        task,
    }
}
