//! A helper process driven by JSON lines: one command per line on its stdin, each carrying an
//! `id`; one reply per line on its stdout with the same `id`, and unsolicited events (lines
//! without an `id`) in between. The Node Yjs client and the VS Code driver both speak it.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct JsonLines {
    pub child: Child,
    stdin: ChildStdin,
    next_id: u64,
    waiters: Waiters,
    /// Unsolicited events, in order (those `on_event` did not take).
    pub events: mpsc::UnboundedReceiver<Value>,
}

impl JsonLines {
    /// Starts `command` with piped stdin/stdout. `on_event` sees each event first and returns
    /// true to keep it from `events` (for events that must be acted on even if nobody reads
    /// `events`). Lines that are not JSON go to stderr.
    pub fn spawn(
        mut command: Command,
        mut on_event: impl FnMut(&Value) -> bool + Send + 'static,
    ) -> JsonLines {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the helper process (is Node.js installed?)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let waiters: Waiters = Arc::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        let routes = waiters.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("helper: {line}");
                    continue;
                };
                match value.get("id").and_then(Value::as_u64) {
                    Some(id) => {
                        if let Some(waiter) = routes.lock().expect("waiters").remove(&id) {
                            let _ = waiter.send(value);
                        }
                    }
                    None if on_event(&value) => {}
                    None => {
                        let _ = events_tx.send(value);
                    }
                }
            }
        });
        JsonLines {
            child,
            stdin,
            next_id: 1,
            waiters,
            events,
        }
    }

    /// Sends a command (an `id` is added); returns a receiver for its reply, which fails if
    /// the process exits first.
    pub async fn send(&mut self, mut command: Value) -> oneshot::Receiver<Value> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters").insert(id, tx);
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to the helper process");
        self.stdin.flush().await.expect("flush");
        rx
    }
}

impl Drop for JsonLines {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
