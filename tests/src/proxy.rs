//! A TCP proxy on loopback between a client and the server: it counts the bytes that cross it
//! in each direction (what a client really puts on the wire, WebSocket framing included), and
//! can cut the line the way a network outage does — silently: nothing gets through in either
//! direction and nobody is told, new connections hang unanswered — until it is restored, when
//! every connection that lived through the cut is dropped (as a router that forgot them would).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (cut, _) = watch::channel(false);
        let task = tokio::spawn({
            let (up, down, cut) = (up.clone(), down.clone(), cut.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let _ = client.set_nodelay(true);
                    let (up, down, cut) = (up.clone(), down.clone(), cut.subscribe());
                    tokio::spawn(async move {
                        if *cut.borrow() {
                            // Unanswered until the cut ends, then dropped.
                            outlast_cut(cut).await;
                            drop(client);
                            return;
                        }
                        forward(client, target, up, down, cut).await;
                    });
                }
            }
        });
        Proxy {
            port,
            up,
            down,
            cut,
            task,
        }
    }

    /// Bytes sent so far: (client to server, server to client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.up.load(SeqCst), self.down.load(SeqCst))
    }

    /// Stops all traffic through the proxy, silently, until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Ends the cut: the connections that lived through it are dropped, new ones get through.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Every connection ends at the end of a cut.
        self.cut();
        self.restore();
    }
}

/// Waits for the current cut to begin (if need be) and end.
async fn outlast_cut(mut cut: watch::Receiver<bool>) {
    let _ = cut.wait_for(|c| *c).await;
    let _ = cut.wait_for(|c| !*c).await;
}

async fn forward(
    client: TcpStream,
    target: u16,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    cut: watch::Receiver<bool>,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut watch = cut.clone();
    tokio::select! {
        _ = async {
            tokio::join!(
                pump(&mut client_read, &mut server_write, &up),
                pump(&mut server_read, &mut client_write, &down),
            )
        } => return,
        _ = watch.wait_for(|c| *c) => {}
    }
    // A cut began: nothing moves any more (the sockets stay open, unread), and the connection
    // ends with the cut.
    outlast_cut(cut).await;
}

/// Copies until either side closes, counting the bytes.
async fn pump(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, counter: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        counter.fetch_add(n as u64, SeqCst);
    }
    let _ = to.shutdown().await;
}
