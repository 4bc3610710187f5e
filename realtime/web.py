"""Live web view for headless boxes: `--serve [HOST:]PORT`.

    /            a page with the live video and telemetry charts (no external scripts)
    /stream.mjpg the overlaid video as MJPEG (multipart/x-mixed-replace)
    /stats       the latest telemetry as JSON

The server runs on its own threads inside the process and binds 127.0.0.1 unless a host is
given. The render thread only hands over a reference to the newest frame; JPEG encoding
happens on the viewers' threads, once per frame however many watch, and only while someone
does. Each viewer gets the newest frame when it is ready for one, so a slow or stalled viewer
skips frames for itself alone and never slows the pipeline.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

from realtime.sinks import Sink, SinkError

BOUNDARY = "frame"
HISTORY = 300  # frames of telemetry kept for /stats percentiles and the charts
JPEG_QUALITY = 80


def parse_address(text: str) -> tuple[str, int]:
    """"8080" → ("127.0.0.1", 8080); "0.0.0.0:8080" → as given."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SinkError(f"--serve {text}: give PORT or HOST:PORT, e.g. --serve 8080")
    return host or "127.0.0.1", int(port)


class LatestFrame:
    """The newest rendered frame and its JPEG, encoded on demand by whichever viewer asks
    first; viewers wait on `changed` for a sequence number newer than the one they sent."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.sequence = 0
        self.frame: np.ndarray | None = None
        self.jpeg: tuple[int, bytes] | None = None  # (sequence, bytes)
        self._encode_lock = threading.Lock()

    def publish(self, frame: np.ndarray) -> None:
        with self.changed:
            self.frame = frame
            self.sequence += 1
            self.changed.notify_all()

    def newer_than(self, sequence: int, timeout: float) -> tuple[int, bytes] | None:
        """JPEG of the newest frame once it is newer than `sequence`, or None on timeout."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.sequence > sequence, timeout):
                return None
            frame, current = self.frame, self.sequence
        with self._encode_lock:
            if self.jpeg is None or self.jpeg[0] != current:
                ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                self.jpeg = (current, data.tobytes())
            return self.jpeg


class WebSink(Sink):
    """The web view as a pipeline sink; the HTTP server starts here and stops in close()."""

    def __init__(self, address: str):
        host, port = parse_address(address)
        self.latest = LatestFrame()
        self.records: collections.deque = collections.deque(maxlen=HISTORY)
        self.records_lock = threading.Lock()
        self.closed = threading.Event()
        self.viewers = 0  # changed by the viewer threads, under viewers_lock
        self.viewers_lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # the terminal belongs to the app
                pass

            def do_GET(self) -> None:
                route = self.path.split("?")[0]
                if route == "/":
                    self._send(200, "text/html; charset=utf-8", PAGE.encode())
                elif route == "/stats":
                    self._send(200, "application/json", json.dumps(sink.stats()).encode())
                elif route == "/stream.mjpg":
                    sink.stream(self)
                else:
                    self._send(404, "text/plain", b"not found: try /, /stream.mjpg or /stats\n")

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as error:
            raise SinkError(f"--serve {address}: cannot listen on {host}:{port} "
                            f"({error.strerror}); choose another port") from None
        self.server.daemon_threads = True
        self.host, self.port = host, self.server.server_address[1]
        self.name = self.url = f"http://{host}:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="web", daemon=True)
        self.thread.start()

    # -- pipeline side (render thread) ------------------------------------------------------
    def write_frame(self, frame: np.ndarray, source_name: str | None = None) -> None:
        self.latest.publish(frame)

    def write_record(self, record: dict) -> None:
        with self.records_lock:
            self.records.append((time.monotonic(), record))

    def close(self) -> None:
        self.closed.set()
        with self.latest.changed:
            self.latest.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # -- viewer side (server threads) -------------------------------------------------------
    def stream(self, handler: BaseHTTPRequestHandler) -> None:
        """MJPEG to one viewer until it leaves or the run ends."""
        handler.send_response(200)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        handler.send_header("Cache-Control", "no-store")
        handler.end_headers()
        sent = 0
        with self.viewers_lock:
            self.viewers += 1
        try:
            while not self.closed.is_set():
                newest = self.latest.newer_than(sent, timeout=0.5)
                if newest is None:
                    continue
                sent, jpeg = newest
                handler.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                    f"{len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the viewer left
        finally:
            with self.viewers_lock:
                self.viewers -= 1

    def stats(self) -> dict[str, Any]:
        """Latest telemetry: FPS over the last second, stage medians, latency p50/p95."""
        with self.records_lock:
            history = list(self.records)
        if not history:
            return {"frames": 0, "fps": None, "viewers": self.viewers}
        now = time.monotonic()
        recent = [r for t, r in history if now - t <= 1.0]
        latency = np.array([r.get("latency_ms", 0.0) for _, r in history])
        last = history[-1][1]
        return {
            "frames": last["index"] + 1, "fps": len(recent), "dropped": last["dropped"],
            "infer_ms": last.get("infer_ms"), "latency_ms_p50": float(np.percentile(latency, 50)),
            "latency_ms_p95": float(np.percentile(latency, 95)), "viewers": self.viewers,
            "stages_ms": {key[:-3]: float(np.median([r.get(key, 0.0) for _, r in history]))
                          for key in ("decode_ms", "resize_ms", "infer_ms", "render_ms", "write_ms")},
        }


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>roadseg live</title>
<style>
 body { background: #111; color: #ddd; font: 14px system-ui, sans-serif; margin: 16px; }
 .row { display: flex; gap: 16px; flex-wrap: wrap; align-items: flex-start; }
 img { max-width: 720px; width: 60%; min-width: 320px; background: #000; align-self: flex-start; }
 .row > div { flex: 1; min-width: 430px; }
 canvas { background: #1b1b1b; border: 1px solid #333; }
 #numbers span { display: inline-block; min-width: 120px; margin-right: 14px; }
</style></head>
<body>
<h3>roadseg &mdash; live</h3>
<div class="row">
 <img id="video" src="/stream.mjpg" alt="live overlay">
 <div>
  <div id="numbers"></div>
  <canvas id="fps" width="420" height="120"></canvas><br>
  <canvas id="latency" width="420" height="120"></canvas><br>
  <canvas id="stages" width="420" height="120"></canvas>
 </div>
</div>
<script>
const series = {fps: [], infer: [], p50: [], p95: [], dropped: [], decode: [], render: [], write: []};
const keep = 120;
function push(name, value) { series[name].push(value); if (series[name].length > keep) series[name].shift(); }
function chart(id, title, lines) {
  const canvas = document.getElementById(id), g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const values = lines.flatMap(l => series[l.key]).filter(v => v != null);
  const top = Math.max(1, ...values) * 1.15;
  lines.forEach((line, n) => {
    g.strokeStyle = line.color; g.beginPath();
    series[line.key].forEach((v, i) => {
      const x = i * canvas.width / (keep - 1), y = canvas.height - (v || 0) / top * (canvas.height - 18);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
    g.fillStyle = line.color; g.fillText(line.label, 8 + n * 90, 12);
  });
  g.fillStyle = "#888"; g.fillText(title + "  (max " + top.toFixed(1) + ")", 8, canvas.height - 4);
  canvas.dataset.points = series[lines[0].key].length;
}
async function tick() {
  try {
    const s = await (await fetch("/stats", {cache: "no-store"})).json();
    if (s.frames) {
      push("fps", s.fps); push("infer", s.infer_ms); push("p50", s.latency_ms_p50);
      push("p95", s.latency_ms_p95); push("dropped", s.dropped);
      push("decode", s.stages_ms.decode); push("render", s.stages_ms.render); push("write", s.stages_ms.write);
      document.getElementById("numbers").innerHTML =
        `<span>frames ${s.frames}</span><span>FPS ${s.fps}</span><span>infer ${s.infer_ms.toFixed(1)} ms</span>` +
        `<span>latency p50 ${s.latency_ms_p50.toFixed(0)} / p95 ${s.latency_ms_p95.toFixed(0)} ms</span>` +
        `<span>dropped ${s.dropped}</span><span>viewers ${s.viewers}</span>`;
      chart("fps", "frames per second, drops", [{key: "fps", color: "#4fc3f7", label: "FPS"},
                                                 {key: "dropped", color: "#ef5350", label: "dropped"}]);
      chart("latency", "milliseconds", [{key: "infer", color: "#ffb300", label: "infer"},
                                        {key: "p50", color: "#66bb6a", label: "latency p50"},
                                        {key: "p95", color: "#ab47bc", label: "latency p95"}]);
      chart("stages", "stage medians, ms", [{key: "decode", color: "#90a4ae", label: "decode"},
                                            {key: "render", color: "#26c6da", label: "render"},
                                            {key: "write", color: "#ff7043", label: "write"}]);
    }
  } catch (e) { /* the run has ended */ }
  setTimeout(tick, 500);
}
tick();
</script>
</body></html>
"""
