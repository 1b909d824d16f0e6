"""A real HTTP server on 127.0.0.1 with scripted misbehaviours, and test images.

Routes map a request path to a :class:`Behaviour`; every request is counted
per path so that tests can assert which URLs were (not) fetched. Nothing
here talks to the internet.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------
# Images


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image: smooth gradients, a few shapes and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack(
        [
            128 + 100 * np.sin(x / (width / 3.0) + seed),
            128 + 100 * np.cos(y / (height / 2.0) - seed),
            255 * (x + y) / (width + height),
        ],
        axis=-1,
    )
    noisy = base + rng.normal(0, 12, size=base.shape)
    img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.ellipse([x0, y0, x0 + width // 3, y0 + height // 3], fill=colour)
    return img


def encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def jpeg(width: int, height: int, seed: int, **kwargs: Any) -> bytes:
    return encode(photo(width, height, seed), "JPEG", quality=85, **kwargs)


def png_rgba(width: int, height: int, seed: int) -> bytes:
    img = photo(width, height, seed).convert("RGBA")
    alpha = Image.linear_gradient("L").resize((width, height))
    img.putalpha(alpha)
    return encode(img, "PNG")


def gif(width: int, height: int, seed: int) -> bytes:
    return encode(photo(width, height, seed).convert("P", palette=Image.Palette.ADAPTIVE), "GIF")


def cmyk_jpeg(width: int, height: int, seed: int) -> bytes:
    return encode(photo(width, height, seed).convert("CMYK"), "JPEG", quality=85)


def exif_rotated_jpeg(width: int, height: int, seed: int) -> bytes:
    """A JPEG stored ``width x height`` whose EXIF says 'rotate 90 degrees'."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return encode(photo(width, height, seed), "JPEG", quality=85, exif=exif)


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``side x side`` pixels that compresses to ~50 KB.

    Built with zlib row by row instead of Pillow so that the 400-megapixel
    image never exists in memory.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------
# Behaviours


@dataclass
class Behaviour:
    """What the server does for one path.

    kind: ``body`` (status/content-type/body), ``slow`` (sleep ``delay``
    then body), ``hang`` (headers never sent until the server stops: a timeout
    whatever the client's timeout and the machine's load), ``truncated`` (Content-Length > bytes sent, then close),
    ``stream`` (no Content-Length, close-delimited), ``reset`` (TCP RST),
    ``redirect`` (``status`` to ``location``, after ``delay`` seconds),
    ``flaky`` (503 for the first ``fail_times`` hits, then body), ``drip``
    (one byte of ``body`` every ``delay`` seconds), ``drip_headers`` (the
    status line at once, then one header byte every ``delay`` seconds).
    ``encoding`` is sent as ``Content-Encoding`` (``body`` is sent as is).
    """

    kind: str = "body"
    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    location: str = ""
    delay: float = 0.0
    fail_times: int = 0
    encoding: str = ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is exercised
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet tests
        pass

    def do_GET(self) -> None:
        key = unquote(self.path)
        hits = self.server.record(key)
        behaviour = self.server.routes.get(key)
        if self.server.delay:
            time.sleep(self.server.delay)
        if behaviour is None:
            self._send(404, b"no route", "text/plain")
            return
        getattr(self, f"_do_{behaviour.kind}")(behaviour, hits)

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _do_body(self, b: Behaviour, hits: int) -> None:
        extra = {"Content-Encoding": b.encoding} if b.encoding else {}
        self._send(b.status, b.body, b.content_type, **extra)

    def _do_hang(self, b: Behaviour, hits: int) -> None:
        self.server.released.wait()  # set by stop(): the client has long given up by then
        self.close_connection = True

    def _do_slow(self, b: Behaviour, hits: int) -> None:
        time.sleep(b.delay)
        self._send(b.status, b.body, b.content_type)

    def _do_flaky(self, b: Behaviour, hits: int) -> None:
        if hits <= b.fail_times:
            self._send(503, b"busy", "text/plain")
        else:
            self._send(b.status, b.body, b.content_type)

    def _do_redirect(self, b: Behaviour, hits: int) -> None:
        self.server.released.wait(b.delay)  # each hop slow, none slow enough for a read timeout
        self._send(b.status, b"", "text/plain", Location=b.location)

    def _do_truncated(self, b: Behaviour, hits: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", b.content_type)
        self.send_header("Content-Length", str(len(b.body) + 10_000))
        self.end_headers()
        self.wfile.write(b.body)
        self.wfile.flush()
        self.close_connection = True

    def _do_stream(self, b: Behaviour, hits: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", b.content_type)
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for start in range(0, len(b.body), 65536):
                self.wfile.write(b.body[start : start + 65536])
        except OSError:
            pass  # the client gave up, as it should
        self.close_connection = True

    def _do_drip(self, b: Behaviour, hits: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", b.content_type)
        self.send_header("Content-Length", str(len(b.body)))
        self.end_headers()
        try:
            for i in range(len(b.body)):
                self.wfile.write(b.body[i : i + 1])
                self.wfile.flush()
                time.sleep(b.delay)
        except OSError:
            pass
        self.close_connection = True

    def _do_drip_headers(self, b: Behaviour, hits: int) -> None:
        self.wfile.write(f"HTTP/1.1 {b.status} OK\r\n".encode())
        self.wfile.flush()
        head = f"Content-Type: {b.content_type}\r\nContent-Length: {len(b.body)}\r\n\r\n"
        try:
            for byte in head.encode():
                if self.server.released.wait(b.delay):
                    break  # stop(): the test is over
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            else:
                self.wfile.write(b.body)
        except OSError:
            pass  # the client hung up, as it should
        self.close_connection = True

    def _do_reset(self, b: Behaviour, hits: int) -> None:
        # SO_LINGER with a zero timeout turns close() into a TCP RST.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class LoopbackServer(ThreadingHTTPServer):
    """Threaded HTTP server on 127.0.0.1:<free port> with per-path hit counts."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Behaviour] = {}
        self.hits: Counter[str] = Counter()
        self.delay = 0.0  # added to every request (to make runs last a while)
        self.released = threading.Event()  # lets ``hang`` handlers go at stop()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, path: str) -> int:
        with self._lock:
            self.hits[path] += 1
            return self.hits[path]

    def reset_hits(self) -> None:
        with self._lock:
            self.hits.clear()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # broken pipes from clients that hung up on purpose

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()


def path_of(url: str) -> str:
    """The route key the server sees for ``url`` (path + query, unquoted)."""
    parts = urlsplit(url)
    return unquote(parts.path + (f"?{parts.query}" if parts.query else ""))
