//! The reference Yjs client: `tests/node/client.mjs` drives the stock `y-websocket`
//! `WebsocketProvider`, one JSON command per line on stdin, one JSON reply per line on stdout.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use crate::workspace;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct NodeClient {
    child: Child,
    stdin: ChildStdin,
    next_id: u64,
    waiters: Waiters,
    /// Unsolicited events (`{"event": ...}`), in order.
    pub events: mpsc::UnboundedReceiver<Value>,
}

impl NodeClient {
    pub fn spawn() -> NodeClient {
        let dir = workspace().join("tests/node");
        assert!(
            dir.join("node_modules").exists(),
            "tests/node/node_modules is missing: run `npm ci` in tests/node (tests/run does)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("client.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node (is Node.js installed?)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let waiters: Waiters = Arc::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        let routes = waiters.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                match value.get("id").and_then(Value::as_u64) {
                    Some(id) => {
                        if let Some(waiter) = routes.lock().expect("waiters").remove(&id) {
                            let _ = waiter.send(value);
                        }
                    }
                    None => {
                        let _ = events_tx.send(value);
                    }
                }
            }
        });
        NodeClient {
            child,
            stdin,
            next_id: 1,
            waiters,
            events,
        }
    }

    /// Sends a command and returns its reply; panics if the reply does not come in 30 s.
    pub async fn call(&mut self, mut command: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters").insert(id, tx);
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to node client");
        self.stdin.flush().await.expect("flush");
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("no reply to {command}"))
            .expect("node client alive")
    }

    /// Like [`NodeClient::call`], and asserts that the reply says `ok`.
    pub async fn ok(&mut self, command: Value) -> Value {
        let reply = self.call(command.clone()).await;
        assert_eq!(reply["ok"], json!(true), "{command} failed: {reply}");
        reply
    }

    pub async fn connect(&mut self, base: &str, room: &crate::server::RoomRef) -> Value {
        self.ok(json!({"cmd": "connect", "url": base, "room": room.id, "token": room.token}))
            .await
    }

    pub async fn text(&mut self, file: &str) -> String {
        let reply = self.ok(json!({"cmd": "text", "file": file})).await;
        reply["text"].as_str().unwrap_or_default().to_string()
    }
}

impl Drop for NodeClient {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
