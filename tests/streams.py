"""A real MJPEG-over-HTTP camera on 127.0.0.1 for the stream tests (what many IP cameras and
ESP32/Raspberry Pi camera servers speak): multipart/x-mixed-replace JPEG frames."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np


class MjpegCamera:
    """Serves `frames` JPEG frames per connection at `fps`, then closes the connection (or,
    with silent=True, accepts and never sends a byte)."""

    def __init__(self, frames: int = 60, fps: float = 30.0, size: tuple[int, int] = (320, 240),
                 silent: bool = False):
        self.frames, self.fps, self.size, self.silent = frames, fps, size, silent
        self.connections = 0
        self.stop = threading.Event()
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                camera.connections += 1
                if camera.silent:
                    camera.stop.wait(30)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                width, height = camera.size
                for index in range(camera.frames):
                    if camera.stop.is_set():
                        return
                    image = np.full((height, width, 3), (200, 170, 120), np.uint8)
                    cv2.rectangle(image, ((index * 5) % width, height // 2),
                                  ((index * 5) % width + 30, height // 2 + 20), (30, 30, 200), -1)
                    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    camera.stop.wait(1 / camera.fps)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "MjpegCamera":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
