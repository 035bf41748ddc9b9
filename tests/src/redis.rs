//! A private `redis-server` (Debian's package; `tests/run` installs it) on a free loopback port,
//! without persistence, that a test can kill and start again on the same port; and a [`Tap`]:
//! a loopback TCP proxy between one node and Redis that can cut the line silently (as a network
//! outage does) or lose exactly one relayed update on its way to the node.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::free_port;
use crate::server::TempDir;

pub struct Redis {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
        };
        redis.up().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it answers PING.
    pub async fn up(&mut self) {
        assert!(self.child.is_none(), "redis-server is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("redis.log"))
            .expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("redis-server is missing: `apt-get install redis-server`, or run `tests/run`");
        self.child = Some(child);
        crate::eventually(
            Duration::from_secs(30),
            "redis-server to answer PING",
            || {
                let port = self.port;
                async move { ping(port).await.then_some(()) }
            },
        )
        .await;
    }

    /// SIGKILL: Redis is gone at once, with every subscription.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").await.is_ok()
        && stream.read_exact(&mut reply).await.is_ok()
        && &reply == b"+PONG\r\n"
}

/// A proxy in front of Redis for one node. [`Tap::cut`] stops all traffic silently until
/// [`Tap::restore`], which drops the connections that lived through the cut;
/// [`Tap::lose_next_update`] makes the next relayed update bound for the node vanish, as a
/// lost message would, while the connection stays up.
pub struct Tap {
    pub port: u16,
    cut: watch::Sender<bool>,
    lose: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    pub async fn start(target: u16) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tap");
        let port = listener.local_addr().expect("tap address").port();
        let (cut, _) = watch::channel(false);
        let lose = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (cut, lose, lost) = (cut.clone(), lose.clone(), lost.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (cut, lose, lost) = (cut.subscribe(), lose.clone(), lost.clone());
                    tokio::spawn(async move {
                        let mut watch = cut.clone();
                        let is_cut = *cut.borrow();
                        if is_cut {
                            // Unanswered until the cut ends, then dropped.
                            let _ = watch.wait_for(|c| !*c).await;
                            return;
                        }
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                            return;
                        };
                        tokio::select! {
                            _ = forward(client, server, &lose, &lost) => {}
                            _ = async { let _ = watch.wait_for(|c| *c).await; } => {
                                // Nothing moves any more; the connection ends with the cut.
                                let _ = watch.wait_for(|c| !*c).await;
                            }
                        }
                    });
                }
            }
        });
        Tap {
            port,
            cut,
            lose,
            lost,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// The next relayed update (a pub/sub message of kind 1) bound for the node is dropped.
    pub fn lose_next_update(&self) {
        self.lose.store(true, SeqCst);
    }

    /// Updates dropped so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(SeqCst)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
        self.restore();
    }
}

/// Client to server as it comes; server to client frame by frame, so that one frame can be
/// left out whole.
async fn forward(client: TcpStream, server: TcpStream, lose: &AtomicBool, lost: &AtomicU64) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let down = async {
        let mut buffer = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buffer.extend_from_slice(&chunk[..n]);
            let mut out = Vec::new();
            let mut at = 0;
            while let Some(len) = frame_len(&buffer[at..]) {
                let frame = &buffer[at..at + len];
                if is_relayed_update(frame) && lose.swap(false, SeqCst) {
                    lost.fetch_add(1, SeqCst);
                } else {
                    out.extend_from_slice(frame);
                }
                at += len;
            }
            buffer.drain(..at);
            if client_write.write_all(&out).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(up, down);
}

/// The length of the RESP frame at the start of `buf`, if it is all there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let header = std::str::from_utf8(&buf[1..line_end]).ok()?;
    let head = line_end + 2;
    match buf.first()? {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Some(head),
        b'$' | b'=' | b'!' => {
            let n: i64 = header.parse().ok()?;
            if n < 0 {
                return Some(head);
            }
            let end = head + n as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' | b'>' | b'~' | b'%' => {
            let n: i64 = header.parse().ok()?;
            let items = if buf[0] == b'%' { n * 2 } else { n };
            let mut at = head;
            for _ in 0..items.max(0) {
                at += frame_len(&buf[at..])?;
            }
            Some(at)
        }
        _ => Some(buf.len()),
    }
}

/// A pub/sub message whose payload is a relayed update: `[version][origin: 16][kind 1]…`.
fn is_relayed_update(frame: &[u8]) -> bool {
    let Some(rest) = frame
        .strip_prefix(b"*3\r\n$7\r\nmessage\r\n")
        .or_else(|| frame.strip_prefix(b">3\r\n$7\r\nmessage\r\n"))
    else {
        return false;
    };
    // Skip the channel, then read the payload's header.
    let Some(channel) = frame_len(rest) else {
        return false;
    };
    let payload = &rest[channel..];
    let Some(line_end) = payload.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    payload.get(line_end + 2 + 17) == Some(&1)
}
