"""The window on a real X server (Xvfb) with a real window manager (openbox): the q key (sent
with xdotool) and closing the window as its × button does (wmctrl asks the window manager,
which sends WM_DELETE_WINDOW) both end the run like q, with the summary and exit 0. Skipped
where those tools are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from helpers import REPO

TOOLS = ("Xvfb", "xdotool", "openbox", "wmctrl")
pytestmark = pytest.mark.skipif(any(shutil.which(tool) is None for tool in TOOLS),
                                reason="Xvfb, xdotool, openbox and wmctrl are needed (Debian: apt-get "
                                       "install xvfb xdotool openbox wmctrl)")


@pytest.fixture
def display():
    number = 90 + os.getpid() % 9
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(f"/tmp/.X11-unix/X{number}") and time.monotonic() < deadline:
        time.sleep(0.1)
    manager = subprocess.Popen(["openbox"], env={**os.environ, "DISPLAY": f":{number}"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    yield f":{number}"
    manager.terminate()
    server.terminate()
    manager.wait(timeout=10)
    server.wait(timeout=10)


@pytest.mark.parametrize("action", ["q key", "close button"])
def test_quit_key_and_closing_the_window_end_the_run_cleanly(assets, display, action):
    env = {**os.environ, "DISPLAY": display}
    env.pop("WAYLAND_DISPLAY", None)
    process = subprocess.Popen([sys.executable, str(REPO / "run.py"), str(assets["video"]), "--loop",
                                "--show", "--pace", "realtime"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found = subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--name", "roadseg"],
                           env=env, capture_output=True, text=True, timeout=60)
    window = found.stdout.split()[0]
    time.sleep(1.0)  # let frames reach the window
    command = (["xdotool", "key", "--window", window, "q"] if action == "q key"
               else ["wmctrl", "-i", "-c", window])
    subprocess.run(command, env=env, check=True, timeout=10)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "stopped: quit key" in stderr, stderr
