#!/usr/bin/env python3
"""Captures a Neovim session with peers' cursors for the README (not a test).

    python3 tests/neovim/plugin/screenshot.py [--out docs/screenshots/neovim]

Starts a throwaway duet-server (target/debug, SQLite), a room holding a small Python file, two
headless Neovims with the plugin as the peers "bob" (a caret) and "cy" (a selection), and "ann"'s
Neovim in a private tmux server; then `tmux capture-pane -p -e` -> OUT.txt (ANSI colours), and,
if chromium is installed, OUT.png (rendered from the capture). Everything it starts is ended by
its id at the end.
"""

import argparse
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, HERE)
import nvimctl  # noqa: E402

SAMPLE = '''import math


def area(radius: float) -> float:
    """The area of a circle."""
    return math.pi * radius ** 2


def greet(name: str) -> str:
    return f"hello, {name}!"


for who in ["ann", "bob", "cy"]:
    print(greet(who), area(len(who)))
'''


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait(what, check, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError("timed out waiting for " + what)


# --- ANSI (tmux capture-pane -e) to HTML -----------------------------------------------------

PALETTE = ["#000000", "#cd0000", "#00cd00", "#cdcd00", "#0000ee", "#cd00cd", "#00cdcd", "#e5e5e5",
           "#7f7f7f", "#ff0000", "#00ff00", "#ffff00", "#5c5cff", "#ff00ff", "#00ffff", "#ffffff"]


def xterm256(n):
    if n < 16:
        return PALETTE[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return "#%02x%02x%02x" % (steps[n // 36], steps[(n // 6) % 6], steps[n % 6])
    v = 8 + 10 * (n - 232)
    return "#%02x%02x%02x" % (v, v, v)


def ansi_to_html(text, fg0="#e0e2ea", bg0="#14161b"):
    state = {"fg": None, "bg": None, "bold": False, "italic": False, "underline": False, "reverse": False}
    out = []

    def span(chunk):
        if not chunk:
            return
        fg, bg = state["fg"] or fg0, state["bg"] or bg0
        if state["reverse"]:
            fg, bg = bg, fg
        style = "color:%s;background:%s" % (fg, bg)
        if state["bold"]:
            style += ";font-weight:bold"
        if state["italic"]:
            style += ";font-style:italic"
        if state["underline"]:
            style += ";text-decoration:underline"
        out.append('<span style="%s">%s</span>' % (style, html.escape(chunk)))

    pos = 0
    for m in re.finditer(r"\x1b\[([0-9;:]*)m", text):
        span(text[pos:m.start()])
        pos = m.end()
        codes = [int(c) if c else 0 for c in re.split("[;:]", m.group(1))] or [0]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                state.update(fg=None, bg=None, bold=False, italic=False, underline=False, reverse=False)
            elif c == 1:
                state["bold"] = True
            elif c == 3:
                state["italic"] = True
            elif c == 4:
                state["underline"] = True
            elif c == 7:
                state["reverse"] = True
            elif c == 22:
                state["bold"] = False
            elif c == 23:
                state["italic"] = False
            elif c == 24:
                state["underline"] = False
            elif c == 27:
                state["reverse"] = False
            elif c in (38, 48) and i + 1 < len(codes):
                key = "fg" if c == 38 else "bg"
                if codes[i + 1] == 2 and i + 4 < len(codes):
                    state[key] = "#%02x%02x%02x" % tuple(codes[i + 2:i + 5])
                    i += 4
                elif codes[i + 1] == 5 and i + 2 < len(codes):
                    state[key] = xterm256(codes[i + 2])
                    i += 2
            elif c == 39:
                state["fg"] = None
            elif c == 49:
                state["bg"] = None
            elif 30 <= c <= 37:
                state["fg"] = PALETTE[c - 30]
            elif 40 <= c <= 47:
                state["bg"] = PALETTE[c - 40]
            elif 90 <= c <= 97:
                state["fg"] = PALETTE[c - 90 + 8]
            elif 100 <= c <= 107:
                state["bg"] = PALETTE[c - 100 + 8]
            i += 1
    span(text[pos:])
    return ('<!doctype html><meta charset="utf-8"><body style="margin:0;background:%s">'
            '<pre style="margin:0;padding:12px;font:15px/1.3 \'DejaVu Sans Mono\',monospace">%s</pre></body>'
            % (bg0, "".join(out)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "screenshots", "neovim"))
    p.add_argument("--width", type=int, default=84)
    p.add_argument("--height", type=int, default=18)
    args = p.parse_args()

    target = os.path.join(ROOT, "target", "debug")
    scratch = tempfile.mkdtemp(prefix="duet-shot-")
    port = free_port()
    tmux = ["tmux", "-L", "duet-shot-%d" % os.getpid(), "-f", "/dev/null"]
    server = peers = None
    editors = []
    try:
        server = subprocess.Popen(
            [os.path.join(target, "duet-server"), "--bind", "127.0.0.1:%d" % port],
            env=dict(os.environ, DATABASE_URL="sqlite://%s/duet.db" % scratch),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = "http://127.0.0.1:%d" % port
        wait("the server", lambda: _ok(base + "/healthz"))
        req = urllib.request.Request(base + "/rooms", data=json.dumps({"files": {"main.py": SAMPLE}}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        room = json.load(urllib.request.urlopen(req, timeout=5))
        invite = room["invite"]
        plugin = os.path.join(ROOT, "editors", "neovim")
        lsp = os.path.join(target, "duet-lsp")

        # The peers: headless Neovims with the plugin.
        for name, color, keys in [("bob", "#61afef", "10G$F{"), ("cy", "#c678dd", "6G0wwvee")]:
            ws = os.path.join(scratch, name)
            os.makedirs(ws)
            ed = nvimctl.Editor({"name": name, "cwd": ws, "files": ["main.py"], "plugin_dir": plugin,
                                 "setup": {"cmd": [lsp], "name": name, "color": color, "invite": invite}}, scratch)
            editors.append(ed)
            wait(name + " in the room", lambda: ed.nv.exec_lua("return require('duet').statusline()").startswith("duet: " + room["id"][:8]))
            wait(name + "'s buffer", lambda: ed.nv.exec_lua("return vim.api.nvim_buf_line_count(0)") > 5)
            ed.nv.input(keys)

        # ann, in tmux.
        ws = os.path.join(scratch, "ann")
        os.makedirs(ws)
        with open(os.path.join(ws, "main.py"), "w") as f:
            f.write(SAMPLE)
        sock = os.path.join(scratch, "ann.sock")
        env = {
            "DUET_PLUGIN_DIR": plugin,
            "DUET_SETUP": json.dumps({"cmd": [lsp], "name": "ann", "color": "#e06c75", "invite": invite}),
            "XDG_STATE_HOME": os.path.join(scratch, "ann-state"),
            "XDG_CONFIG_HOME": os.path.join(scratch, "ann-config"),
            "XDG_DATA_HOME": os.path.join(scratch, "ann-data"),
            "COLORTERM": "truecolor",
            "TERM": "tmux-256color",
        }
        cmd = ["env"] + ["%s=%s" % kv for kv in env.items()] + [
            nvimctl.find_nvim(), "--clean", "-u", os.path.join(HERE, "init.lua"), "-i", "NONE",
            "--cmd", "set termguicolors number", "--listen", sock, "main.py",
            "-c", "set statusline=\\ %f%=%{%v:lua.require'duet'.statusline()%}\\ "]
        subprocess.run(tmux + ["new-session", "-d", "-s", "shot", "-x", str(args.width), "-y", str(args.height),
                               "-c", ws, " ".join(_quote(c) for c in cmd)], check=True)
        subprocess.run(tmux + ["set", "-g", "status", "off"], check=True)
        import pynvim
        ann = wait("ann's Neovim", lambda: _attach(sock))
        wait("ann to see both peers", lambda: ann.exec_lua(
            "local ns = vim.api.nvim_get_namespaces().duet_peers\n"
            "return ns and #vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {}) >= 3"))
        ann.command("normal! 13G0w")
        ann.command("echo ''")
        time.sleep(1.0)
        ann.command("redraw!")
        time.sleep(0.5)
        capture = subprocess.run(tmux + ["capture-pane", "-p", "-e", "-t", "shot"], check=True,
                                 capture_output=True, text=True).stdout
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out + ".txt", "w", encoding="utf-8") as f:
            f.write(capture)
        print("wrote", args.out + ".txt")
        try:
            ann.command("qa!")
        except Exception:  # noqa: BLE001
            pass

        chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if chromium:
            page = os.path.join(scratch, "shot.html")
            with open(page, "w", encoding="utf-8") as f:
                f.write(ansi_to_html(capture))
            w, h = args.width * 9 + 24, int(args.height * 19.5) + 24
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--screenshot=" + args.out + ".png", "--window-size=%d,%d" % (w, h),
                            "file://" + page], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=60)
            print("wrote", args.out + ".png")
        _ = pynvim
    finally:
        subprocess.run(tmux + ["kill-server"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for ed in editors:
            ed.stop()
        if server is not None:
            server.send_signal(signal.SIGKILL)
            server.wait()
        shutil.rmtree(scratch, ignore_errors=True)
        _ = peers


def _ok(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _attach(sock):
    import pynvim

    try:
        return pynvim.attach("socket", path=sock)
    except (OSError, EOFError):
        return None


def _quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    main()
