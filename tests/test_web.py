"""The live web view, served by the running app and read with real HTTP clients (and, where
Chromium is installed, a real headless browser)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest

from helpers import REPO, write_video


def start_app(*args: str) -> tuple[subprocess.Popen, str]:
    """run.py with --serve on a free port; returns the process and the page's URL."""
    process = subprocess.Popen([sys.executable, str(REPO / "run.py"), "--serve", "127.0.0.1:0",
                                "--headless", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        found = re.search(r"serving the live view on (http://\S+)", line)
        if found:
            return process, found.group(1)
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"the app did not start serving: {process.stderr.read()}")


def read_mjpeg(url: str, frames: int, timeout: float = 30) -> tuple[list[np.ndarray], float]:
    """Decode `frames` JPEGs from an MJPEG stream; also the seconds until the first one."""
    started = time.monotonic()
    first = None
    images = []
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        buffer = b""
        while len(images) < frames:
            buffer += response.read1(65536)
            start, end = buffer.find(b"\xff\xd8"), buffer.find(b"\xff\xd9")
            while start != -1 and end > start:
                images.append(cv2.imdecode(np.frombuffer(buffer[start:end + 2], np.uint8), cv2.IMREAD_COLOR))
                first = first or time.monotonic() - started
                buffer = buffer[end + 2:]
                start, end = buffer.find(b"\xff\xd8"), buffer.find(b"\xff\xd9")
    return images, first


def test_page_stream_and_stats_with_a_stalled_second_viewer(tmp_path):
    video = write_video(tmp_path / "drive.mp4", 60, size=(320, 240))
    summary = tmp_path / "summary.json"
    process, url = start_app("--video", str(video), "--loop", "--pace", "realtime",
                             "--max-frames", "240", "--summary-json", str(summary),
                             "--metrics", str(tmp_path / "m.jsonl"))
    try:
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "/stream.mjpg" in page and "/stats" in page and "<canvas" in page
        # A viewer that connects and never reads a byte.
        host, port = re.match(r"http://([\d.]+):(\d+)/", url).groups()
        stalled = socket.create_connection((host, int(port)))
        stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        images, first_frame_s = read_mjpeg(url + "stream.mjpg", 30)
        assert all(image.shape == (240, 320, 3) for image in images)
        stats = json.loads(urllib.request.urlopen(url + "stats", timeout=10).read())
        assert stats["frames"] > 0 and stats["viewers"] >= 1 and stats["latency_ms_p50"] > 0
        assert set(stats["stages_ms"]) >= {"decode", "infer", "render", "write"}
        assert first_frame_s < 5
    finally:
        _, stderr = process.communicate(timeout=60)  # the run ends by itself at --max-frames
        stalled.close()
    assert process.returncode == 0, stderr
    report = json.loads(summary.read_text())
    assert report["frames"] + report["dropped"] == 240
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == report["frames"]
    with pytest.raises(OSError):  # the server stopped with the run
        urllib.request.urlopen(url, timeout=2)


def test_bad_serve_address_is_one_error_line(tmp_path):
    video = write_video(tmp_path / "d.mp4", 5)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for spec, fragment in ((f"127.0.0.1:{port}", "cannot listen"), ("notaport", "PORT")):
            result = subprocess.run([sys.executable, str(REPO / "run.py"), "--video", str(video),
                                     "--headless", "--serve", spec], cwd=REPO, capture_output=True,
                                    text=True, timeout=60)
            errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert result.returncode == 2 and len(errors) == 1 and fragment in errors[0], result.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_a_real_browser_shows_video_and_updating_charts(tmp_path):
    video = write_video(tmp_path / "drive.mp4", 60, size=(320, 240))
    process, url = start_app("--video", str(video), "--loop", "--pace", "realtime")
    try:
        time.sleep(1)
        # The page after 4 s of live updates: the DOM shows whether the image loaded and how
        # many points each chart drew.
        dom = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                              "--virtual-time-budget=4000", "--run-all-compositor-stages-before-draw",
                              "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
        shot = tmp_path / "page.png"
        subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--window-size=1440,800", "--virtual-time-budget=4000",
                        f"--screenshot={shot}", url], capture_output=True, timeout=90)
    finally:
        process.terminate()
        process.communicate(timeout=30)
    points = [int(n) for n in re.findall(r'data-points="(\d+)"', dom)]
    assert len(points) == 3 and min(points) >= 2, dom[-2000:]
    assert "frames " in dom and "FPS" in dom
    image = cv2.imread(str(shot))
    assert image is not None
    # The video area (top left) is not blank: frames were drawn into the <img>.
    assert image[60:300, 16:340].std() > 10
