//! A real nginx (Debian's package; `tests/run` installs it) running `docs/nginx.conf` as
//! documented, in front of a `duet-server`, on a free loopback port. Only the values an
//! operator would edit are replaced (host name, port, certificate, log, upstream), and each
//! replacement must find its text: a changed `docs/nginx.conf` fails here instead of being
//! tested half. The nginx master is stopped by its pid when the handle drops.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::server::TempDir;
use crate::tls::Issued;
use crate::{free_port, workspace};

pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

/// The nginx binary: on `PATH`, else where Debian puts it.
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file());
    let path = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    assert!(
        path.is_file(),
        "nginx is missing: `apt-get install nginx`, or run `tests/run` (which installs it)"
    );
    path
}

impl Nginx {
    /// Starts nginx on `https://localhost:<port>` with `issued`, proxying to `upstream_port`.
    pub async fn start(issued: &Issued, upstream_port: u16) -> Nginx {
        Nginx::balance(issued, &[upstream_port]).await
    }

    /// Like [`Nginx::start`], spreading connections over several nodes (round-robin, as
    /// documented).
    pub async fn balance(issued: &Issued, upstream_ports: &[u16]) -> Nginx {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let site = render_site(
            &std::fs::read_to_string(workspace().join("docs/nginx.conf"))
                .expect("read docs/nginx.conf"),
            &[
                ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
                (
                    "server_name duet.example.com;",
                    "server_name localhost;".into(),
                ),
                (
                    "/etc/ssl/duet/fullchain.pem",
                    issued.cert.display().to_string(),
                ),
                (
                    "/etc/ssl/duet/privkey.pem",
                    issued.key.display().to_string(),
                ),
                (
                    "/var/log/nginx/duet.access.log",
                    dir.0.join("access.log").display().to_string(),
                ),
                (
                    "server 127.0.0.1:8000;",
                    upstream_ports
                        .iter()
                        .map(|port| format!("server 127.0.0.1:{port};"))
                        .collect::<Vec<_>>()
                        .join("\n    "),
                ),
            ],
        );
        std::fs::write(dir.0.join("duet.conf"), site).expect("write duet.conf");
        // The top level of an nginx.conf, in a private prefix (pid, logs, temp files).
        let main = format!(
            "{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             access_log off;\n  include {d}/duet.conf;\n}}\n",
            // As root, nginx would hand its workers to `nobody`, who cannot read the test's
            // files.
            user = if is_root() { "user root;\n" } else { "" },
            d = dir.0.display(),
        );
        std::fs::write(dir.0.join("nginx.conf"), main).expect("write nginx.conf");
        let log = std::fs::File::create(dir.0.join("stderr.log")).expect("nginx stderr log");
        let child = Command::new(binary())
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(dir.0.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, port, dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = nginx.child.try_wait().expect("nginx status");
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                panic!("nginx did not start ({exited:?}):\n{}", nginx.errors());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nginx
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    pub fn ws_base(&self) -> String {
        format!("wss://localhost:{}/ws", self.port)
    }

    /// nginx's access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("access.log")).unwrap_or_default()
    }

    /// nginx's error log and stderr, for failure reports.
    pub fn errors(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.0.join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master: it stops its workers (SIGKILL would leave them running).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// `template` with each `(from, to)` applied; panics when `from` is not in it.
fn render_site(template: &str, replacements: &[(&str, String)]) -> String {
    replacements
        .iter()
        .fold(template.to_string(), |text, (from, to)| {
            assert!(
                text.contains(from),
                "docs/nginx.conf no longer contains {from:?}: update tests/src/nginx.rs with it"
            );
            text.replace(from, to)
        })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}
