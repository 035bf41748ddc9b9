//! VS Code, for real: code-server 4.100.3 (VS Code 1.100.3) in headless Chromium, with the duet
//! extension installed from its `.vsix`, joins a room through `duet-lsp` and types into
//! `main.py` while another editor (a Rust Yjs peer) edits the same file. Both end identical, and
//! so does the server; VS Code shows the peer in its status bar and the peer's cursor in the
//! editor, the peer sees VS Code's cursor, and following the peer works from the command
//! palette. Then both type at the same place at once, and converge again.
//! A second test checks what a user is told on a malformed invite, a wrong token and a room
//! deleted while connected, and that what they typed meanwhile stays in the editor; a third, that
//! a join refused while in a room leaves VS Code in that room.
//! Beside a real Neovim with the duet plugin: VS Code's undo and redo keys take back only VS
//! Code's own edits, for everyone, and put the cursor there (in a file that is not shared, and
//! with the `duet.undo` setting off, Ctrl+Z stays VS Code's own); and VS Code typing on the
//! empty last line of a file keeps the keys on one line for everyone.
//!
//! `tests/run` installs code-server (cached per machine, `tests/vscode/install.sh`) and builds the
//! `.vsix`; without them this test fails and says so. `tests/vscode/driver.mjs` drives the
//! browser; the extension's own state (document text, status-bar text, decorations) is read
//! from the file it writes when `DUET_TEST_STATE_FILE` is set, not from the DOM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duet_e2e::jsonlines::JsonLines;
use duet_e2e::nvim::Nvims;
use duet_e2e::server::{Backend, Database, RoomRef, Server, TempDir};
use duet_e2e::yclient::YClient;
use duet_e2e::{binary, eventually, workspace};
use serde_json::{json, Value};
use tokio::process::Command;
use tokio::sync::oneshot;
use yrs::Text;

const CODE_SERVER_VERSION: &str = "4.100.3";
const WAIT: Duration = Duration::from_secs(15);

/// Where `tests/vscode/install.sh` put code-server (same rule as the script).
fn code_server_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DUET_CODE_SERVER_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    cache
        .join("duet")
        .join(format!("code-server-{CODE_SERVER_VERSION}"))
}

/// The extension package, rebuilt first if a source file is newer (and its node_modules exist).
fn vsix() -> PathBuf {
    if let Some(path) = std::env::var_os("DUET_VSCODE_VSIX") {
        return PathBuf::from(path);
    }
    let dir = workspace().join("editors/vscode");
    let vsix = dir.join("duet.vsix");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let built = modified(&vsix);
    let stale = std::fs::read_dir(dir.join("src"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([dir.join("package.json"), dir.join("README.md")])
        .any(|p| modified(&p) > built);
    if stale && dir.join("node_modules").exists() {
        let status = std::process::Command::new("npm")
            .args(["run", "--silent", "package"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("npm run package");
        assert!(
            status.success(),
            "building the .vsix failed (npm run package in editors/vscode)"
        );
    }
    assert!(
        vsix.exists(),
        "{} is missing: run tests/run (it runs `npm ci` and `npm run package` in editors/vscode)",
        vsix.display()
    );
    vsix
}

/// `tests/vscode/driver.mjs`: one code-server and one Chromium page. Everything it started is
/// killed when this drops (the driver itself, and code-server's and Chromium's process groups),
/// and then its scratch folder (the workspace, VS Code's data, the logs) is removed.
/// One VS Code at a time: each is a code-server and a Chromium, and two at once on a small
/// machine made VS Code too slow to open a file within the driver's bounds.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct VsCode {
    process: JsonLines,
    groups: Arc<Mutex<Vec<u32>>>,
    state_file: PathBuf,
    scratch: PathBuf,
    _dir: TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl VsCode {
    /// Starts VS Code on a workspace of its own holding `files`, with the extension's
    /// `settings` (plus this build's bridge as `duet.path`, and the LSP traffic in VS Code's
    /// logs, kept when a test fails), and waits (bounded) until it shows `main.py` with the
    /// extension up. `"duet.path": null` in `settings` leaves `duet.path` unset and puts the
    /// bridge where `cargo install` would (`~/.cargo/bin` of VS Code's home), off its `PATH`.
    async fn start(label: &str, files: &[(&str, &str)], settings: Value) -> (VsCode, Value) {
        let turn = ONE_AT_A_TIME.lock().await;
        let dir = TempDir::new(label);
        let workspace_dir = dir.0.join("ws");
        std::fs::create_dir_all(workspace_dir.join(".vscode")).expect("workspace");
        for (file, text) in files {
            std::fs::write(workspace_dir.join(file), text).expect("workspace file");
        }
        let mut settings = settings;
        let cargo_installed = settings.get("duet.path") == Some(&Value::Null);
        let scratch = dir.0.join("code");
        if cargo_installed {
            settings
                .as_object_mut()
                .expect("settings")
                .remove("duet.path");
            // The driver makes `scratch/home` VS Code's home.
            let bin = scratch.join("home/.cargo/bin");
            std::fs::create_dir_all(&bin).expect("cargo bin");
            std::os::unix::fs::symlink(binary("duet-lsp"), bin.join("duet-lsp")).expect("link");
        } else {
            settings["duet.path"] = json!(binary("duet-lsp"));
        }
        settings["duet.trace.server"] = json!("verbose");
        std::fs::write(
            workspace_dir.join(".vscode/settings.json"),
            serde_json::to_string_pretty(&settings).expect("json"),
        )
        .expect("settings");
        std::fs::create_dir_all(&scratch).expect("scratch");
        let code_server = code_server_dir();
        assert!(
            code_server.join(".duet-installed").exists(),
            "code-server {CODE_SERVER_VERSION} is not installed in {}: run tests/run (or tests/vscode/install.sh) once on this machine",
            code_server.display()
        );
        let driver_dir = workspace().join("tests/vscode");
        assert!(
            driver_dir.join("node_modules/playwright-core").exists(),
            "tests/vscode/node_modules is missing: run tests/run (or tests/vscode/install.sh)"
        );
        let vsix = vsix();
        let log = std::fs::File::create(scratch.join("driver.log")).expect("driver log");
        let mut command = Command::new("node");
        command
            .arg(driver_dir.join("driver.mjs"))
            .arg("--code-server")
            .arg(&code_server)
            .arg("--vsix")
            .arg(&vsix)
            .arg("--workspace")
            .arg(&workspace_dir)
            .arg("--scratch")
            .arg(&scratch)
            .arg("--timeout-ms")
            .arg("100000")
            .env("DUET_LOG", "debug")
            .env("DUET_LOG_FILE", scratch.join("duet-lsp.log"))
            .stderr(log);
        if cargo_installed {
            // No duet-lsp on the PATH VS Code gets, and `~/.cargo/bin` is its home's.
            let path = std::env::var("PATH").unwrap_or_default();
            let kept: Vec<&str> = path
                .split(':')
                .filter(|dir| !Path::new(dir).join("duet-lsp").exists())
                .collect();
            command.env("PATH", kept.join(":")).env_remove("CARGO_HOME");
        }
        // code-server's and Chromium's process groups, to kill when the test ends even if the
        // driver died: recorded as the driver announces them, whoever reads the events.
        let groups: Arc<Mutex<Vec<u32>>> = Arc::default();
        let pids = groups.clone();
        let process = JsonLines::spawn(command, move |event| {
            if event["event"] != "pids" {
                return false;
            }
            let mut pids = pids.lock().expect("pids");
            for key in ["codeServer", "chromium"] {
                if let Some(pid) = event[key].as_u64() {
                    if !pids.contains(&(pid as u32)) {
                        pids.push(pid as u32);
                    }
                }
            }
            true
        });
        let mut vscode = VsCode {
            process,
            groups,
            state_file: scratch.join("duet-state.json"),
            scratch,
            _dir: dir,
            _turn: turn,
        };
        // Longer than the driver's own bounds for start-up (workbench, activation, first open).
        let ready = tokio::time::timeout(Duration::from_secs(120), vscode.process.events.recv())
            .await
            .unwrap_or_else(|_| vscode.fail("VS Code to be ready within 120 s"))
            .unwrap_or_else(|| vscode.fail("the driver exited before VS Code was ready"));
        if ready["event"] != "ready" {
            vscode.fail(&format!("VS Code did not start: {ready}"));
        }
        (vscode, ready)
    }

    /// Panics with `what` and the logs of the driver, code-server and the bridge.
    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n{}", self.logs());
    }

    fn logs(&self) -> String {
        let tail = |name: &str, lines: usize| {
            let text = std::fs::read_to_string(self.scratch.join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            format!(
                "--- {name} (last {lines} lines) ---\n{}\n",
                all[start..].join("\n")
            )
        };
        tail("driver.log", 40) + &tail("code-server.log", 20) + &tail("duet-lsp.log", 40)
    }

    /// Sends a command; returns a receiver for its answer.
    async fn send(&mut self, command: Value) -> oneshot::Receiver<Value> {
        self.process.send(command).await
    }

    async fn call(&mut self, command: Value) -> Value {
        let what = command["cmd"].clone();
        let rx = self.send(command).await;
        // Longer than the driver's own bound for any command (60 s for an open): its answer says
        // what failed.
        let reply = tokio::time::timeout(Duration::from_secs(75), rx)
            .await
            .unwrap_or_else(|_| self.fail(&format!("the driver did not answer {what} in 75 s")))
            .unwrap_or_else(|_| self.fail(&format!("the driver exited during {what}")));
        if reply["ok"] != true {
            self.fail(&format!("driver command {what} failed: {reply}"));
        }
        reply
    }

    /// The extension's state: `{active: {text, ...}, statusBarText, decorations, peers, ...}`.
    fn state(&self) -> Value {
        std::fs::read_to_string(&self.state_file)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    }

    fn text(&self) -> Option<String> {
        self.state()["active"]["text"].as_str().map(str::to_string)
    }

    /// Polls the extension's state until `check` holds; fails with the logs after `timeout`.
    async fn wait_state(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state();
            if check(&state) {
                return state;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "timed out after {timeout:?} waiting for {what}; VS Code's state: {state:#}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls what is on screen (`dom`: the status bar, the notifications, the active tab and
    /// its lines) until `check` holds; returns it.
    async fn wait_dom(&mut self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let dom = self.call(json!({"cmd": "dom"})).await;
            if check(&dom) {
                return dom;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "timed out after {WAIT:?} waiting for {what}; on screen: {dom:#}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls the notifications on screen until one contains all of `needles`; returns it.
    async fn wait_notification(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let reply = self.call(json!({"cmd": "notifications"})).await;
            let toasts: Vec<String> = reply["toasts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            if let Some(toast) = toasts
                .iter()
                .find(|t| needles.iter().all(|n| t.contains(n)))
            {
                return toast.clone();
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "no notification with {needles:?} after {WAIT:?}; on screen: {toasts:?}; \
                     the bridge's messages: {}",
                    self.state()["messages"]
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn quit(mut self) {
        let rx = self.send(json!({"cmd": "quit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.process.child.wait()).await;
    }
}

impl Drop for VsCode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the whole logs (the scratch folder goes away) for whoever reads the failure,
            // in a folder of the test's own (two failing tests must not mix their logs).
            let test = std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .replace("::", "-");
            let keep = binary("duet-lsp")
                .parent()
                .expect("target dir")
                .join(format!("vscode-e2e-failure-{test}"));
            let _ = std::fs::remove_dir_all(&keep);
            let _ = std::fs::create_dir_all(&keep);
            for name in [
                "driver.log",
                "code-server.log",
                "duet-lsp.log",
                "duet-state.json",
            ] {
                let _ = std::fs::copy(self.scratch.join(name), keep.join(name));
            }
            // VS Code's logs, with the LSP trace (duet.trace.server) in exthost*/output_logging_*.
            let _ = std::process::Command::new("cp")
                .arg("-r")
                .arg(self.scratch.join("user-data/logs"))
                .arg(keep.join("vscode-logs"))
                .status();
            eprintln!("{}full logs: {}", self.logs(), keep.display());
        }
        // The driver kills both groups when it quits; this covers a driver that died or hung.
        // The groups are gone by then, and their ids are not reused within the same second.
        for pid in self.groups.lock().expect("pids").iter() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Whether `needle`'s characters all appear in `haystack`, in order.
fn is_subsequence(needle: &str, haystack: &str) -> bool {
    let mut rest = haystack.chars();
    needle.chars().all(|c| rest.any(|h| h == c))
}

fn utf16_len(s: &str) -> u32 {
    s.encode_utf16().count() as u32
}

/// A Neovim with the plugin (`editors/neovim`), its own bridge and its own copy of `files`,
/// in the room of `invite`, with every file loaded and shared, and the first one shown.
async fn neovim_peer(name: &str, dir: &Path, files: &[(&str, &str)], invite: &str) -> Nvims {
    for (file, text) in files {
        std::fs::write(dir.join(file), text).expect("Neovim's workspace file");
    }
    let mut nv = Nvims::spawn().await;
    let paths: Vec<&str> = files.iter().map(|(file, _)| *file).collect();
    nv.start(
        name,
        dir,
        &paths,
        json!({"name": name, "color": "#98c379", "invite": invite}),
    )
    .await;
    nv.wait_for(
        name,
        "the Neovim to be connected to the room",
        "return require('duet').state.status",
        json!([]),
        WAIT,
        |s| s["state"] == "connected",
    )
    .await;
    nv.lua(
        name,
        "local files = ...
         for i = #files, 1, -1 do vim.cmd('silent edit ' .. vim.fn.fnameescape(files[i])) end",
        json!([paths]),
    )
    .await;
    for (file, text) in files {
        let lines = text.strip_suffix('\n').unwrap_or(text).to_string();
        nv.wait_for(
            name,
            &format!("{file} loaded"),
            NVIM_LINES,
            json!([file]),
            WAIT,
            move |v| v.as_str() == Some(&lines),
        )
        .await;
    }
    nv
}

/// Neovim's buffer of `file`, its lines joined: what its user sees.
const NVIM_LINES: &str = "local b = vim.fn.bufnr(...)
    return table.concat(vim.api.nvim_buf_get_lines(b, 0, -1, true), '\\n')";

/// Waits until VS Code's active document, the Neovim's buffer and the server's copy of `file`
/// all read `expected`.
async fn converge(
    vscode: &VsCode,
    nv: &mut Nvims,
    name: &str,
    (server, room): (&Server, &RoomRef),
    file: &str,
    expected: &str,
) {
    // Neovim may show one final line break fewer than the text has (its 'eol'), or as many.
    let lines = [expected, expected.strip_suffix('\n').unwrap_or(expected)];
    let deadline = Instant::now() + WAIT;
    loop {
        let ours = vscode.text().unwrap_or_default();
        let theirs = nv.lua(name, NVIM_LINES, json!([file])).await;
        let stored = server.file(room, file).await.unwrap_or_default();
        if ours == expected && lines.iter().any(|l| theirs == *l) && stored == expected {
            return;
        }
        if Instant::now() > deadline {
            vscode.fail(&format!(
                "{file}: no convergence on {expected:?} within {WAIT:?}:\n\
                 VS Code: {ours:?}\nNeovim (lines): {theirs}\nserver:  {stored:?}\n{}",
                nv.report()
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_types_while_a_peer_edits_the_same_file() {
    let started = Instant::now();
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let initial = "def greet(name):\n    return f\"hello {name}\"\n";
    let room = server.create_room_with(&[("main.py", initial)]).await;
    let invite = server.ws_url(&room);

    // The other editor: in the room before VS Code, its cursor in main.py.
    let peer = YClient::join(&invite).await;
    let presence = |anchor: u32, head: u32| {
        json!({"user": {"name": "rusty", "color": "#e06c75"},
               "cursor": {"file": "main.py", "anchor": anchor, "head": head}})
    };
    peer.set_presence(presence(4, 9));

    // VS Code's workspace: the file, and the extension's settings (invite, who we are).
    let settings = json!({"duet.invite": invite, "duet.name": "vera", "duet.color": "#61afef"});
    let (mut vscode, ready) = VsCode::start("vscode", &[("main.py", initial)], settings).await;
    let startup = started.elapsed();
    eprintln!("VS Code ready after {startup:?}: {}", ready["timings"]);

    // The extension activated, started the bridge from duet.path and joined the room.
    let state = vscode
        .wait_state("the extension to be connected to the room", WAIT, |s| {
            s["status"]["state"] == "connected"
        })
        .await;
    assert_eq!(state["activated"], true);
    assert_eq!(state["running"], true, "the bridge runs: {state:#}");
    assert_eq!(state["bridge"], json!(binary("duet-lsp")));
    assert_eq!(state["status"]["room"], room.id.as_str());
    assert!(state["active"]["path"]
        .as_str()
        .is_some_and(|p| p.ends_with("/main.py")));
    assert_eq!(vscode.text().as_deref(), Some(initial));

    // The peer is in the status bar. (Its cursor is drawn further down: the bridge publishes
    // `duet/peers` when presence or text changes, not when a document is opened, so a peer
    // that has not moved since VS Code opened main.py has no range yet.)
    let short = &room.id[..8];
    vscode
        .wait_state("the status bar to show the peer", WAIT, |s| {
            s["statusBarText"]
                .as_str()
                .is_some_and(|t| t.contains(short) && t.contains("connected · 1 peer"))
        })
        .await;
    let dom = vscode.call(json!({"cmd": "dom"})).await;
    let status_items: Vec<&str> = dom["statusBar"]
        .as_array()
        .expect("statusBar")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        status_items
            .iter()
            .any(|t| *t == format!("duet {short} · connected · 1 peer")),
        "the status bar as rendered: {status_items:?}"
    );

    // VS Code types at the end of the file; while it types, the peer edits the top and the body.
    let typed = "\ndef shout(name):\n    return greet(name).upper()\n\nprint(shout(\"duet\"))\n";
    let reply = vscode
        .send(json!({"cmd": "type", "text": typed, "delayMs": 35}))
        .await;
    let typing = tokio::spawn(reply);
    let typing_started = Instant::now();
    eventually(
        WAIT,
        "VS Code's first keystrokes to reach the peer",
        || async { (peer.text("main.py").as_deref() != Some(initial)).then_some(()) },
    )
    .await;
    let first_keys = typing_started.elapsed();
    let prefix_lines = ["# shared with duet\n", "# rusty was here\n", "import sys\n"];
    let mut prefix_len = 0;
    for line in prefix_lines {
        peer.insert("main.py", prefix_len, line);
        prefix_len += utf16_len(line);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // "hello" -> "hi" in the body VS Code is not touching.
    let hello = prefix_len + utf16_len(&initial[..initial.find("hello").expect("hello")]);
    peer.edit("main.py", |txn, text| {
        text.remove_range(txn, hello, 5);
        text.insert(txn, hello, "hi");
    });
    let peer_done = typing_started.elapsed();
    assert!(
        !typing.is_finished(),
        "VS Code was still typing while the peer edited (peer done after {peer_done:?})"
    );
    // The peer's edits show up in VS Code while it is still typing.
    let shown_while_typing = {
        let deadline = Instant::now() + WAIT;
        loop {
            if vscode.text().is_some_and(|t| {
                t.starts_with("# shared with duet\n# rusty was here\nimport sys\n")
                    && t.contains("\"hi {name}\"")
            }) {
                break !typing.is_finished();
            }
            if Instant::now() > deadline {
                vscode.fail(&format!(
                    "the peer's edits never reached VS Code:\nVS Code: {:?}\npeer:    {:?}",
                    vscode.text(),
                    peer.text("main.py")
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let reply = tokio::time::timeout(Duration::from_secs(30), typing)
        .await
        .expect("typing finishes within 30 s")
        .expect("join")
        .expect("driver alive");
    assert_eq!(reply["ok"], true, "typing: {reply}");
    let typing_time = typing_started.elapsed();
    eprintln!(
        "typing: first keys at the peer after {first_keys:?}, peer's edits done after {peer_done:?}, \
         shown in VS Code while typing: {shown_while_typing}, typing done after {typing_time:?}"
    );

    // Everyone converges on the same text.
    let expected = format!(
        "{}{}{}",
        prefix_lines.concat(),
        initial.replace("hello", "hi"),
        typed
    );
    vscode
        .wait_state(
            &format!("VS Code's text to converge on {expected:?}"),
            WAIT,
            |s| s["active"]["text"] == expected.as_str(),
        )
        .await;
    peer.wait_text("main.py", &expected, WAIT).await;
    eventually(WAIT, "the server's copy to converge", || async {
        (server.file(&room, "main.py").await.as_deref() == Some(expected.as_str())).then_some(())
    })
    .await;

    // VS Code's cursor (duet/cursor) reached the peer: at the end of the file, where it typed.
    let end = utf16_len(&expected);
    eventually(WAIT, "VS Code's cursor at the peer", || async {
        peer.peers()
            .iter()
            .any(|p| {
                p["user"]["name"] == "vera"
                    && p["user"]["color"] == "#61afef"
                    && p["cursor"]["file"] == "main.py"
                    && p["cursor"]["head"] == end
            })
            .then_some(())
    })
    .await;

    // The peer selects `greet` in `def greet`: VS Code draws it where it now is.
    let def = utf16_len(&expected[..expected.find("def greet").expect("def greet")]) + 4;
    peer.set_presence(presence(def, def + 5));
    let line = prefix_lines.len();
    let state = vscode
        .wait_state("the peer's selection on `greet`", WAIT, |s| {
            s["peers"][0]["range"]
                == json!({"start": {"line": line, "character": 4}, "end": {"line": line, "character": 9}})
                && s["decorations"] == 2
        })
        .await;
    assert_eq!(state["peers"][0]["name"], "rusty");
    assert_eq!(state["peers"][0]["color"], "#e06c75");
    assert!(
        state["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m
                .as_str()
                .is_some_and(|m| m.starts_with("duet: joined room")))),
        "the bridge's messages reached VS Code: {state:#}"
    );
    let dom = vscode.call(json!({"cmd": "dom"})).await;
    let lines = dom["viewLines"].as_str().unwrap_or_default();
    assert!(
        lines.contains("print(shout(\"duet\"))") && lines.contains("# rusty was here"),
        "the editor shows the text: {lines:?}"
    );

    // The commands work from the palette: follow the peer (a quick pick listing it).
    let follow = vscode
        .call(json!({"cmd": "palette", "command": "duet: Follow a peer", "pick": "rusty"}))
        .await;
    let rows = follow["rows"].to_string();
    assert!(
        rows.contains("rusty") && rows.contains(&format!("main.py:{}", line + 1)),
        "the peer list: {rows}"
    );
    vscode
        .wait_state("VS Code to follow the peer", WAIT, |s| {
            s["following"] == s["peers"][0]["clientId"]
                && s["statusBarText"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("· 1 peer · following rusty"))
        })
        .await;

    let screenshot = screenshot_path("DUET_VSCODE_SCREENSHOT", "vscode-e2e.png");
    vscode
        .call(json!({"cmd": "screenshot", "path": screenshot}))
        .await;
    eprintln!("screenshot: {}", screenshot.display());

    // Both type at the same place, the end of the file, at the same time: the interleaving is
    // up to the network, but everyone ends with the same text, holding each side's keystrokes
    // in the order they were typed. The two sides type disjoint characters: the same character
    // typed at the same place while the bridge's edit bringing the other's is in flight is
    // taken for that edit's echo, and one of the two is lost (a documented limit of the
    // bridge, lsp/src/shadow.rs: "indistinguishable by design").
    let vscode_typed = "VERA_TYPES_HERE = 1";
    let peer_typed = "rusty.plays(too)";
    let reply = vscode
        .send(json!({"cmd": "type", "text": vscode_typed, "delayMs": 35}))
        .await;
    let typing = tokio::spawn(reply);
    for c in peer_typed.chars() {
        peer.append("main.py", &c.to_string());
        tokio::time::sleep(Duration::from_millis(35)).await;
    }
    let overlapped = !typing.is_finished();
    let reply = tokio::time::timeout(Duration::from_secs(30), typing)
        .await
        .expect("typing finishes within 30 s")
        .expect("join")
        .expect("driver alive");
    assert_eq!(reply["ok"], true, "typing: {reply}");
    let length =
        expected.chars().count() + vscode_typed.chars().count() + peer_typed.chars().count();
    let deadline = Instant::now() + WAIT;
    let both = loop {
        let text = vscode.text().unwrap_or_default();
        let theirs = peer.text("main.py").unwrap_or_default();
        if text == theirs && text.chars().count() == length {
            break text;
        }
        if Instant::now() > deadline {
            let server_text = server.file(&room, "main.py").await.unwrap_or_default();
            vscode.fail(&format!(
                "after typing at the same place, no convergence on {length} characters in {WAIT:?}:\n\
                 VS Code: {:?}\npeer:    {:?}\nserver:  {:?}",
                text.get(expected.len()..).unwrap_or(&text),
                theirs.get(expected.len()..).unwrap_or(&theirs),
                server_text.get(expected.len()..).unwrap_or(&server_text),
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(both.starts_with(&expected), "{both:?}");
    let rest = &both[expected.len()..];
    assert!(
        is_subsequence(vscode_typed, rest),
        "VS Code's keystrokes in order: {rest:?}"
    );
    assert!(
        is_subsequence(peer_typed, rest),
        "the peer's keystrokes in order: {rest:?}"
    );
    eventually(WAIT, "the server's copy to converge", || async {
        (server.file(&room, "main.py").await.as_deref() == Some(both.as_str())).then_some(())
    })
    .await;
    eprintln!("typing at the same place (overlapped: {overlapped}): {rest:?}");

    vscode.quit().await;
    eprintln!("VS Code test done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_says_what_went_wrong_and_keeps_the_typing() {
    let started = Instant::now();
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    // A room without main.py: VS Code's copy goes in when it joins.
    let room = server.create_room_with(&[]).await;

    // The workspace's invite is malformed: its room id is not a UUID.
    let initial = "print(\"start\")\n";
    let settings = json!({
        "duet.invite": "ws://127.0.0.1:1/ws/not-a-uuid?token=x",
        "duet.name": "vera",
    });
    let (mut vscode, _) = VsCode::start("vscode-errors", &[("main.py", initial)], settings).await;

    // 1. The bad invite: said, about the invite; the bridge runs, in no room.
    let bad_invite = vscode
        .wait_notification(&["cannot join", "invite", "not-a-uuid"])
        .await;
    let state = vscode.state();
    assert_eq!(state["running"], true, "the bridge runs: {state:#}");
    assert_ne!(state["status"]["state"], "connected", "{state:#}");
    let typed = "a = 1\n";
    vscode
        .call(json!({"cmd": "type", "text": typed, "delayMs": 20}))
        .await;
    let mut expected = format!("{initial}{typed}");
    vscode
        .wait_state("the typing after the bad invite", WAIT, |s| {
            s["active"]["text"] == expected.as_str()
        })
        .await;

    // 2. A real room with a wrong token, from the palette: said, about the token.
    let wrong = format!("{}/{}?token=not-the-token", server.ws_base(), room.id);
    vscode
        .call(json!({"cmd": "palette", "command": "duet: Join a room", "input": wrong}))
        .await;
    let wrong_token = vscode.wait_notification(&["token is wrong"]).await;
    assert!(wrong_token.contains("cannot join"), "{wrong_token:?}");
    let typed = "b = 2\n";
    vscode
        .call(json!({"cmd": "type", "text": typed, "delayMs": 20}))
        .await;
    expected.push_str(typed);
    vscode
        .wait_state("the typing after the wrong token", WAIT, |s| {
            s["active"]["text"] == expected.as_str() && s["status"]["state"] != "connected"
        })
        .await;

    // Then the right invite: joined, and the text typed so far is the room's.
    vscode
        .call(json!({"cmd": "palette", "command": "duet: Join a room", "input": server.ws_url(&room)}))
        .await;
    vscode
        .wait_state("the extension to be connected to the room", WAIT, |s| {
            s["status"]["state"] == "connected" && s["status"]["room"] == room.id.as_str()
        })
        .await;
    let typed = "c = 3\n";
    vscode
        .call(json!({"cmd": "type", "text": typed, "delayMs": 20}))
        .await;
    expected.push_str(typed);
    eventually(WAIT, "the server to have everything typed", || async {
        (server.file(&room, "main.py").await.as_deref() == Some(expected.as_str())).then_some(())
    })
    .await;

    // 3. The room is deleted while connected: said; typing goes on, and stays in the editor.
    let deleted = server
        .http
        .delete(server.url(&format!("/rooms/{}", room.id)))
        .bearer_auth(&room.token)
        .send()
        .await
        .expect("DELETE room");
    assert_eq!(deleted.status(), 204);
    let closed = vscode
        .wait_notification(&["closed the room connection", "room deleted"])
        .await;
    let typed = "d = 4  # after the room went away\n";
    vscode
        .call(json!({"cmd": "type", "text": typed, "delayMs": 20}))
        .await;
    expected.push_str(typed);
    let state = vscode
        .wait_state("the typing after the room was deleted", WAIT, |s| {
            s["active"]["text"] == expected.as_str()
        })
        .await;
    assert_ne!(state["status"]["state"], "connected", "{state:#}");
    assert_eq!(state["running"], true, "the bridge still runs: {state:#}");
    // Nothing changes the buffer afterwards either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(vscode.text().as_deref(), Some(expected.as_str()));
    eprintln!("notifications: {bad_invite:?} / {wrong_token:?} / {closed:?}");

    vscode.quit().await;
    eprintln!("VS Code error test done in {:?}", started.elapsed());
}

/// Presses `key` in VS Code, waits for everyone to read `expected` in `main.py`, and for VS Code's
/// cursor to be at the start of `line`, where the change was.
async fn press_and_converge(
    vscode: &mut VsCode,
    nv: &mut Nvims,
    at: (&Server, &RoomRef),
    key: &str,
    expected: &str,
    line: u32,
) {
    vscode.call(json!({"cmd": "press", "key": key})).await;
    converge(vscode, nv, "nvim", at, "main.py", expected).await;
    let cursor = json!({"line": line, "character": 0});
    vscode
        .wait_state(
            &format!("VS Code's cursor at {cursor} after {key}"),
            WAIT,
            |s| s["active"]["selection"] == json!({"anchor": cursor, "active": cursor}),
        )
        .await;
}

/// How long a user pauses between two edits that are two undo steps: longer than the burst of
/// typing the bridge takes for one step (~500 ms).
const BETWEEN_STEPS: Duration = Duration::from_millis(1200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_undo_and_redo_only_its_own_edits() {
    let started = Instant::now();
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let initial = "x = 1\n";
    let room = server.create_room_with(&[("main.py", initial)]).await;
    let invite = server.ws_url(&room);
    let at = (&server, &room);

    // Python files are shared; notes.txt is not.
    let settings = json!({"duet.invite": invite, "duet.name": "vera", "duet.files": "**/*.py"});
    let notes = "notes\n";
    let files = [("main.py", initial), ("notes.txt", notes)];
    let (mut vscode, _) = VsCode::start("vscode-undo", &files, settings).await;
    let nv_dir = TempDir::new("vscode-undo-nvim");
    let mut nv = neovim_peer("nvim", &nv_dir.0, &[("main.py", initial)], &invite).await;
    vscode
        .wait_state(
            "VS Code in the room, with the undo keys routed to duet",
            WAIT,
            |s| s["status"]["state"] == "connected" && s["sharedDocument"] == true,
        )
        .await;

    // VS Code and Neovim take turns, each of VS Code's edits an undo step of its own. Neovim
    // types into the line VS Code wrote last.
    vscode
        .call(json!({"cmd": "type", "text": "a = 1\n", "delayMs": 20}))
        .await;
    converge(&vscode, &mut nv, "nvim", at, "main.py", "x = 1\na = 1\n").await;
    tokio::time::sleep(BETWEEN_STEPS).await;
    nv.input("nvim", "ggO# nv 1<Esc>").await;
    converge(
        &vscode,
        &mut nv,
        "nvim",
        at,
        "main.py",
        "# nv 1\nx = 1\na = 1\n",
    )
    .await;
    vscode
        .call(json!({"cmd": "type", "text": "b = 2\n", "delayMs": 20}))
        .await;
    converge(
        &vscode,
        &mut nv,
        "nvim",
        at,
        "main.py",
        "# nv 1\nx = 1\na = 1\nb = 2\n",
    )
    .await;
    tokio::time::sleep(BETWEEN_STEPS).await;
    nv.input("nvim", "4GA  # nv 2<Esc>").await;
    let all = "# nv 1\nx = 1\na = 1\nb = 2  # nv 2\n";
    converge(&vscode, &mut nv, "nvim", at, "main.py", all).await;

    // Each undo takes back one of VS Code's steps, newest first, for everyone; Neovim's text
    // stays, even its comment typed into VS Code's line. The cursor goes to the change.
    let one_undone = "# nv 1\nx = 1\na = 1\n  # nv 2";
    let both_undone = "# nv 1\nx = 1\n  # nv 2";
    for (key, expected, line) in [("Control+z", one_undone, 3), ("Control+z", both_undone, 2)] {
        press_and_converge(&mut vscode, &mut nv, at, key, expected, line).await;
    }
    // Nothing of VS Code's is left to undo: said in the status bar, and nothing changes.
    vscode
        .call(json!({"cmd": "press", "key": "Control+z"}))
        .await;
    let said = "duet: nothing of yours to undo in main.py";
    let deadline = Instant::now() + WAIT;
    loop {
        let dom = vscode.call(json!({"cmd": "dom"})).await;
        if dom["statusBar"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i == said))
        {
            break;
        }
        if Instant::now() > deadline {
            vscode.fail(&format!("no {said:?} in the status bar: {dom}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    converge(&vscode, &mut nv, "nvim", at, "main.py", both_undone).await;
    // Redo, with both of VS Code's redo keys: VS Code's lines come back where they were.
    for (key, expected, line) in [("Control+Shift+z", one_undone, 2), ("Control+y", all, 3)] {
        press_and_converge(&mut vscode, &mut nv, at, key, expected, line).await;
    }

    // In a file that is not shared, Ctrl+Z is VS Code's own undo.
    vscode
        .call(json!({"cmd": "open", "file": "notes.txt"}))
        .await;
    vscode
        .wait_state("notes.txt active, not shared", WAIT, |s| {
            s["active"]["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/notes.txt"))
                && s["sharedDocument"] == false
        })
        .await;
    vscode
        .call(json!({"cmd": "type", "text": "more", "delayMs": 20}))
        .await;
    let typed = format!("{notes}more");
    vscode
        .wait_state("the typing in notes.txt", WAIT, |s| {
            s["active"]["text"] == typed.as_str()
        })
        .await;
    vscode
        .call(json!({"cmd": "press", "key": "Control+z"}))
        .await;
    vscode
        .wait_state("VS Code's own undo in notes.txt", WAIT, |s| {
            s["active"]["text"] == notes
        })
        .await;

    nv.quit().await;
    vscode.quit().await;
    eprintln!("VS Code undo test done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_types_on_the_last_line_beside_a_neovim() {
    let started = Instant::now();
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    // Files ending with a line break, and with two: VS Code's cursor is on the empty last line.
    let files = [("main.py", "x = 1\n"), ("two.py", "y = 2\n\n")];
    let room = server.create_room_with(&files).await;
    let invite = server.ws_url(&room);

    let settings = json!({"duet.invite": invite, "duet.name": "vera"});
    let (mut vscode, _) = VsCode::start("vscode-eof", &files, settings).await;
    let nv_dir = TempDir::new("vscode-eof-nvim");
    let mut nv = neovim_peer("nvim", &nv_dir.0, &files, &invite).await;
    vscode
        .wait_state("VS Code in the room", WAIT, |s| {
            s["status"]["state"] == "connected"
        })
        .await;

    // Typed at a person's pace: everyone ends with the keys on one line.
    for (file, text) in files {
        if file != "main.py" {
            vscode.call(json!({"cmd": "open", "file": file})).await;
        }
        vscode
            .call(json!({"cmd": "type", "text": "abc", "delayMs": 150}))
            .await;
        let expected = format!("{text}abc");
        converge(&vscode, &mut nv, "nvim", (&server, &room), file, &expected).await;
    }

    nv.quit().await;
    vscode.quit().await;
    eprintln!("VS Code end-of-file test done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_keeps_its_room_when_a_join_fails() {
    let started = Instant::now();
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let initial = "x = 1\n";
    let room = server.create_room_with(&[("main.py", initial)]).await;
    let other = server.create_room_with(&[]).await;
    let peer = YClient::join(&server.ws_url(&room)).await;
    peer.set_presence(json!({"user": {"name": "rusty", "color": "#e06c75"}}));

    let settings = json!({"duet.invite": server.ws_url(&room), "duet.name": "vera"});
    let (mut vscode, _) = VsCode::start("vscode-rejoin", &[("main.py", initial)], settings).await;
    let short = &room.id[..8];
    let in_room = format!("duet {short} · connected · 1 peer");
    vscode
        .wait_state("VS Code in the room with the peer", WAIT, |s| {
            s["statusBarText"]
                .as_str()
                .is_some_and(|t| t.ends_with(&in_room))
        })
        .await;

    // Another room, with a wrong token: refused, and said so, naming the room VS Code is still in.
    let wrong = format!("{}/{}?token=not-the-token", server.ws_base(), other.id);
    vscode
        .call(json!({"cmd": "palette", "command": "duet: Join a room", "input": wrong}))
        .await;
    let refused = vscode
        .wait_notification(&["cannot join", "token", "you are still in room", short])
        .await;
    let state = vscode.state();
    assert!(
        state["statusBarText"]
            .as_str()
            .is_some_and(|t| t.ends_with(&in_room)),
        "the status bar still shows the room: {state:#}"
    );
    assert_eq!(state["status"]["room"], room.id.as_str(), "{state:#}");

    // Typing still reaches the room.
    vscode
        .call(json!({"cmd": "type", "text": "y = 2\n", "delayMs": 20}))
        .await;
    let expected = "x = 1\ny = 2\n";
    peer.wait_text("main.py", expected, WAIT).await;
    eventually(WAIT, "the server to have the typing", || async {
        (server.file(&room, "main.py").await.as_deref() == Some(expected)).then_some(())
    })
    .await;
    let state = vscode.state();
    assert!(
        state["statusBarText"]
            .as_str()
            .is_some_and(|t| t.ends_with(&in_room)),
        "the status bar still shows the room: {state:#}"
    );
    eprintln!("notification: {refused:?}");

    vscode.quit().await;
    eprintln!("VS Code failed-join test done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_undo_setting_off_gives_the_keys_back_to_vscode() {
    let started = Instant::now();
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let initial = "x = 1\n";
    let room = server.create_room_with(&[("main.py", initial)]).await;
    let peer = YClient::join(&server.ws_url(&room)).await;

    let settings = json!({"duet.invite": server.ws_url(&room), "duet.undo": false});
    let (mut vscode, _) = VsCode::start("vscode-undo-off", &[("main.py", initial)], settings).await;
    vscode
        .wait_state("main.py shared", WAIT, |s| s["sharedDocument"] == true)
        .await;

    // VS Code types, then the peer: VS Code's own undo takes back what changed last, the
    // peer's edit, as it does without duet.
    vscode
        .call(json!({"cmd": "type", "text": "a = 1", "delayMs": 20}))
        .await;
    let typed = "x = 1\na = 1";
    peer.wait_text("main.py", typed, WAIT).await;
    peer.insert("main.py", 0, "# peer\n");
    let both = format!("# peer\n{typed}");
    vscode
        .wait_state("the peer's line in VS Code", WAIT, |s| {
            s["active"]["text"] == both.as_str()
        })
        .await;
    vscode
        .call(json!({"cmd": "press", "key": "Control+z"}))
        .await;
    vscode
        .wait_state("VS Code's own undo", WAIT, |s| s["active"]["text"] == typed)
        .await;
    peer.wait_text("main.py", typed, WAIT).await;

    vscode.quit().await;
    eprintln!("VS Code undo-off test done in {:?}", started.elapsed());
}

/// The room's history in VS Code: "duet: Room history…" picks a version and shows the file
/// beside its text then; "Restore this file from the version shown" restores it for everyone;
/// after leaving and joining again, VS Code says what changed meanwhile and who changed it, and
/// "What changed while I was away" shows it as a diff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_room_history_restore_and_what_changed_while_away() {
    let started = Instant::now();
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let good = "x = 1\n";
    let room = server.create_room_with(&[("main.py", good)]).await;
    let peer = YClient::join(&server.ws_url(&room)).await;
    peer.set_presence(json!({"user": {"name": "rusty", "color": "#e06c75"}}));
    server.take_version(&room, "good").await;
    peer.edit("main.py", |txn, text| {
        let len = text.len(txn);
        text.remove_range(txn, 0, len);
        text.insert(txn, 0, "broken\n");
    });
    eventually(WAIT, "the server to have the damage", || async {
        (server.file(&room, "main.py").await.as_deref() == Some("broken\n")).then_some(())
    })
    .await;

    let settings = json!({"duet.invite": server.ws_url(&room), "duet.name": "vera"});
    let (mut vscode, _) =
        VsCode::start("vscode-history", &[("main.py", "broken\n")], settings).await;
    vscode
        .wait_state("VS Code in the room", WAIT, |s| {
            s["status"]["state"] == "connected" && s["active"]["text"] == "broken\n"
        })
        .await;

    // The versions in a quick pick; the one picked beside the file, in a diff.
    let picked = vscode
        .call(json!({"cmd": "palette", "command": "duet: Room history", "pick": "#1"}))
        .await;
    let rows = picked["rows"].to_string();
    assert!(
        rows.contains("#1  good") && rows.contains("main.py (added)"),
        "{rows}"
    );
    vscode
        .wait_state("the history diff", WAIT, |s| {
            s["historyDiff"] == true
                && s["history"] == json!({"version": 1, "path": "main.py"})
                && s["tabs"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == "main.py: version 1 ↔ now"))
        })
        .await;

    // Restored for everyone, VS Code included.
    vscode
        .call(
            json!({"cmd": "palette", "command": "duet: Restore this file from the version shown"}),
        )
        .await;
    peer.wait_text("main.py", good, WAIT).await;
    eventually(WAIT, "the server to have the restore", || async {
        (server.file(&room, "main.py").await.as_deref() == Some(good)).then_some(())
    })
    .await;
    vscode
        .wait_state("the restore in VS Code", WAIT, |s| {
            s["active"]["text"] == good && s["historyDiff"] == false
        })
        .await;

    // Away: rusty adds a line while VS Code is out of the room.
    vscode
        .call(json!({"cmd": "palette", "command": "duet: Leave the room"}))
        .await;
    vscode
        .wait_state("VS Code out of the room", WAIT, |s| {
            s["status"]["state"] == "idle"
        })
        .await;
    peer.append("main.py", "z = 3\n");
    eventually(WAIT, "the server to have rusty's line", || async {
        (server.file(&room, "main.py").await.as_deref() == Some("x = 1\nz = 3\n")).then_some(())
    })
    .await;
    vscode
        .call(json!({"cmd": "palette", "command": "duet: Join a room", "input": server.ws_url(&room)}))
        .await;
    vscode
        .wait_notification(&["while you were away, rusty changed main.py"])
        .await;
    vscode
        .call(json!({"cmd": "palette", "command": "duet: What changed while I was away", "pick": "main.py"}))
        .await;
    vscode
        .wait_state("the diff of what changed", WAIT, |s| {
            s["tabs"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "main.py: when you left ↔ now"))
        })
        .await;

    vscode.quit().await;
    eprintln!("VS Code history test done in {:?}", started.elapsed());
}

/// Where a screenshot goes: the file `variable` names, else `name` in the target directory.
fn screenshot_path(variable: &str, name: &str) -> PathBuf {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| binary("duet-lsp").parent().expect("target dir").join(name))
}

/// Whether the status bar has an item containing `piece`.
fn status_bar_has(dom: &Value, piece: &str) -> bool {
    dom["statusBar"].as_array().is_some_and(|items| {
        items
            .iter()
            .any(|i| i.as_str().is_some_and(|t| t.contains(piece)))
    })
}

/// A newcomer in VS Code, as found by hand: `duet-lsp` where `cargo install` put it (not on
/// VS Code's PATH) is used, and saving it is offered; "Open a room file…" lists the room's
/// files, those the folder lacks marked, and opens the one picked with the room's text,
/// creating it; a file a peer adds is announced; "Jump to a peer…" says where the peer is and
/// goes there, creating their file too; "Show status" shows the whole status; offline, a
/// notification says so and closes once "back online" shows, and the status bar shows no peer
/// count meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_newcomer_finds_the_bridge_the_rooms_files_and_its_peers() {
    let started = Instant::now();
    let db = Database::new(Backend::Sqlite);
    let mut server = Server::start(&db, &[]).await;
    let main = "import util\nprint(util.f())\n";
    let util = "def f():\n    return 41 + 1\n";
    let notes = "# notes\nfirst point\n";
    let room = server
        .create_room_with(&[
            ("main.py", main),
            ("lib/util.py", util),
            ("docs/notes.md", notes),
        ])
        .await;
    let bob = YClient::join(&server.ws_url(&room)).await;
    let at = notes[..notes.find("point").unwrap()].encode_utf16().count();
    bob.set_presence(json!({"user": {"name": "bob", "color": "#61afef"},
        "cursor": {"file": "docs/notes.md", "anchor": at, "head": at}}));

    let settings =
        json!({"duet.invite": server.ws_url(&room), "duet.name": "vera", "duet.path": null});
    let (mut vscode, _) = VsCode::start("vscode-newcomer", &[("main.py", main)], settings).await;
    let workspace_dir = vscode.scratch.parent().expect("dir").join("ws");
    vscode
        .wait_notification(&["not on the PATH", ".cargo/bin/duet-lsp", "duet.path"])
        .await;
    let short = &room.id[..8];
    vscode
        .wait_dom("VS Code in the room with bob", |d| {
            status_bar_has(d, &format!("duet {short} · connected · 1 peer"))
        })
        .await;

    // Open a room file…: the list, then lib/util.py, which the folder lacks.
    let picked = vscode
        .call(json!({"cmd": "palette", "command": "duet: Open a room file", "pick": "lib/util.py"}))
        .await;
    let rows = picked["rows"].to_string();
    assert!(
        rows.contains("lib/util.py")
            && rows.contains("not in your folder yet")
            && rows.contains("main.py"),
        "{rows}"
    );
    vscode
        .wait_dom("lib/util.py open with the room's text", |d| {
            d["activeTab"] == "util.py"
                && d["viewLines"]
                    .as_str()
                    .is_some_and(|t| t.contains("return 41 + 1"))
        })
        .await;
    assert_eq!(
        std::fs::read_to_string(workspace_dir.join("lib/util.py"))
            .ok()
            .as_deref(),
        Some(util)
    );

    // A file bob adds.
    bob.insert("ideas.txt", 0, "more\n");
    vscode
        .wait_notification(&["duet: new in the room: ideas.txt"])
        .await;

    // Jump to a peer…: where bob is, then there (docs/notes.md, which the folder lacks).
    let picked = vscode
        .call(json!({"cmd": "palette", "command": "duet: Jump to a peer", "pick": "bob"}))
        .await;
    let rows = picked["rows"].to_string();
    assert!(rows.contains("docs/notes.md:2"), "where bob is: {rows}");
    assert!(!rows.contains("no file open"), "{rows}");
    vscode
        .wait_dom("bob's file open", |d| {
            d["activeTab"] == "notes.md"
                && d["viewLines"]
                    .as_str()
                    .is_some_and(|t| t.contains("first point"))
        })
        .await;
    assert!(workspace_dir.join("docs/notes.md").exists());

    // Show status: the whole status, in a read-only tab.
    vscode
        .call(json!({"cmd": "palette", "command": "duet: Show status"}))
        .await;
    let dom = vscode
        .wait_dom("the status tab", |d| {
            d["activeTab"] == "duet status.md"
                && d["viewLines"]
                    .as_str()
                    .is_some_and(|t| t.contains("- bob — docs/notes.md:2"))
        })
        .await;
    // (Markdown wraps long lines, such as the invite's, on screen.)
    let shown = dom["viewLines"]
        .as_str()
        .unwrap_or_default()
        .replace('\n', "");
    for needle in [
        format!("room {short} · connected since"),
        server.ws_url(&room),
        "- lib/util.py — shared".to_string(),
    ] {
        assert!(shown.contains(&needle), "{needle:?} missing from {shown}");
    }
    // docs/screenshots/vscode-status.png is this view.
    let screenshot = screenshot_path("DUET_VSCODE_STATUS_SCREENSHOT", "vscode-status.png");
    vscode
        .call(json!({"cmd": "screenshot", "path": screenshot}))
        .await;

    // Follow a peer…: bob goes to ideas.txt, which the folder lacks; VS Code follows him there.
    vscode
        .call(json!({"cmd": "palette", "command": "duet: Follow a peer", "pick": "bob"}))
        .await;
    bob.set_presence(json!({"user": {"name": "bob", "color": "#61afef"},
        "cursor": {"file": "ideas.txt", "anchor": 2, "head": 2}}));
    vscode
        .wait_dom("VS Code following bob into ideas.txt", |d| {
            d["activeTab"] == "ideas.txt"
                && d["viewLines"].as_str().is_some_and(|t| t.contains("more"))
        })
        .await;
    assert!(workspace_dir.join("ideas.txt").exists());

    // Offline: said until back online; no peer count meanwhile.
    server.terminate().await;
    let dom = vscode
        .wait_dom("offline", |d| status_bar_has(d, "· offline"))
        .await;
    assert!(!status_bar_has(&dom, "peer"), "{dom:#}");
    vscode.wait_notification(&["duet: offline ("]).await;
    server.restart().await;
    vscode.wait_notification(&["back online"]).await;
    vscode
        .wait_dom("the offline notification gone", |d| {
            !d["notifications"].to_string().contains("duet: offline (")
        })
        .await;
    vscode.quit().await;
    eprintln!("VS Code newcomer test done in {:?}", started.elapsed());
}
