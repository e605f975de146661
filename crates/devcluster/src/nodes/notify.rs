//! A node's systemd notification socket (`NOTIFY_SOCKET`), as far as the
//! simulator plays it: a `MAINPID=` names the unit's new main process, as
//! an agent handing over in place sends it (`sd_notify(3)`); other
//! assignments are read and left alone.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// Largest datagram read; systemd's own limit is larger, but an agent
/// sends one short line.
const DATAGRAM: usize = 4096;

/// The bound socket of one node.
#[derive(Debug)]
pub struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    /// Binds `node_dir/notify.sock`, writable by the node's users (the
    /// agent runs as one of them), replacing a socket left from before.
    pub fn bind(node_dir: &Path) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = node_dir.join("notify.sock");
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let socket = UnixDatagram::bind(&path)?;
        socket.set_nonblocking(true)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(NotifySocket { path, socket })
    }

    /// The socket's path, the agent's `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last `MAINPID=` among the messages that arrived since the last
    /// call, if any.
    pub fn main_pid(&self) -> Option<u32> {
        let mut buffer = [0u8; DATAGRAM];
        let mut last = None;
        while let Ok(length) = self.socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..length]);
            if let Some(pid) = main_pid_of(&text) {
                last = Some(pid);
            }
        }
        last
    }
}

/// The `MAINPID=` of one notification message (newline-separated
/// assignments).
fn main_pid_of(message: &str) -> Option<u32> {
    message
        .lines()
        .filter_map(|line| line.strip_prefix("MAINPID="))
        .filter_map(|pid| pid.trim().parse().ok())
        .rfind(|&pid| pid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mainpid_sent_to_the_socket_is_read_once() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let socket = NotifySocket::bind(dir.path())?;
        assert_eq!(socket.main_pid(), None);
        let sender = UnixDatagram::unbound()?;
        sender.send_to(b"STATUS=handing over\nMAINPID=4242\n", socket.path())?;
        sender.send_to(b"READY=1\n", socket.path())?;
        assert_eq!(socket.main_pid(), Some(4242));
        assert_eq!(socket.main_pid(), None);
        assert_eq!(main_pid_of("MAINPID=0\nMAINPID=x"), None);
        // A socket left by an earlier run is replaced.
        drop(socket);
        assert!(NotifySocket::bind(dir.path()).is_ok());
        Ok(())
    }
}
