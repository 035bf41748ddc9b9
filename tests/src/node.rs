//! The reference Yjs client: `tests/node/client.mjs` drives the stock `y-websocket`
//! `WebsocketProvider`, one JSON command per line on stdin, one JSON reply per line on stdout.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::Command;

use crate::jsonlines::JsonLines;
use crate::workspace;

pub struct NodeClient {
    process: JsonLines,
}

impl NodeClient {
    pub fn spawn() -> NodeClient {
        NodeClient::spawn_with_env(&[])
    }

    /// A client with extra environment (`NODE_EXTRA_CA_CERTS` to trust a test CA).
    pub fn spawn_with_env(vars: &[(&str, &std::ffi::OsStr)]) -> NodeClient {
        let dir = workspace().join("tests/node");
        assert!(
            dir.join("node_modules").exists(),
            "tests/node/node_modules is missing: run `npm ci` in tests/node (tests/run does)"
        );
        let mut command = Command::new("node");
        command
            .arg(dir.join("client.mjs"))
            .current_dir(&dir)
            .envs(vars.iter().copied())
            .stderr(Stdio::inherit());
        NodeClient {
            process: JsonLines::spawn(command, |_| false),
        }
    }

    /// Sends a command and returns its reply; panics if the reply does not come in 30 s.
    pub async fn call(&mut self, command: Value) -> Value {
        let reply = self.process.send(command.clone()).await;
        tokio::time::timeout(Duration::from_secs(30), reply)
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
