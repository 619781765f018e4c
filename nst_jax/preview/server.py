"""`--preview [HOST:]PORT`: one page and its event stream, served from the run's process.

The standard library's ThreadingHTTPServer is enough, and so no dependency: two fixed routes
("/", the page; "/events", server-sent events), one thread per browser, and nothing that reads a
path from the request. Server-sent events rather than a websocket because the feed is one-way
and EventSource reconnects by itself; each event carries only what that browser has not been
sent (`LiveRun.snapshot`), at most EVENTS_PER_SECOND a second, so a slow browser skips states
instead of queueing them. Bound to 127.0.0.1 unless a host is named; while bound to a loopback
address, requests naming another host are refused (a page elsewhere cannot read the preview
through DNS rebinding).
"""

import errno
import http.server
import ipaddress
import json
import re
import socket
import socketserver
import threading
import time
from importlib import resources
from typing import Any, Optional, Tuple

from nst_jax.errors import UserInputError, reason
from nst_jax.preview.live import LiveRun, Seen

DEFAULT_HOST = "127.0.0.1"
EVENTS_PER_SECOND = 5  # at most: news (a visit's point and images, the end) goes out at once
NUMBERS_SECONDS = 1.0  # a change of the numbers alone (step, speed) waits up to this for company
KEEPALIVE_SECONDS = 10.0  # a comment line this often finds a browser that went away
SEND_TIMEOUT_SECONDS = 10.0  # a browser that takes no data for this long is dropped
END_GRACE_SECONDS = 2.0  # how long a finished run waits for open pages to receive its end
LOOPBACK_NAMES = ("localhost",)
# The page's own rules: its inline script and style, images from data: URIs, its event stream.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}


def parse_address(text: str) -> Tuple[str, int]:
    """"8000" -> ("127.0.0.1", 8000); "0.0.0.0:8000", "[::1]:8000", "myhost:8000" as given.
    Port 0 asks the system for a free port. Raises ValueError naming what is wrong."""
    match = re.fullmatch(r"(?:(\[[^\]\s]+\]|[^:\s\[\]]+):)?(\d{1,5})", text.strip())
    if match is None:
        raise ValueError(f"expected [HOST:]PORT such as 8000 or 0.0.0.0:8000, got {text!r}")
    host, port = match.group(1) or DEFAULT_HOST, int(match.group(2))
    if port > 65535:
        raise ValueError(f"the port must be 0..65535, got {port}")
    return host.strip("[]"), port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK_NAMES


def _page() -> bytes:
    return resources.files("nst_jax.preview").joinpath("page.html").read_bytes()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    live: LiveRun

    def server_bind(self) -> None:
        # HTTPServer's own looks the address up in DNS (socket.getfqdn), which can hang for
        # seconds on a closed network; the name is only used in error pages.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    loopback: bool
    closing: threading.Event
    feeds: int
    feeds_ended: threading.Condition


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "nst-jax-preview"

    def log_message(self, format: str, *args: Any) -> None:  # the run's terminal is for the run
        pass

    def do_GET(self) -> None:
        if not self._host_allowed():
            self.send_error(403, "this preview answers only to its own address")
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", _page(), PAGE_HEADERS)
        elif path == "/events":
            self._feed()
        elif path == "/state.json":  # the same state at once, for scripts and curl
            state, _ = self.server.live.snapshot()
            self._send(200, "application/json", json.dumps(state).encode(), {"Cache-Control": "no-store"})
        else:
            self.send_error(404, "the preview serves / and /events only")

    def _host_allowed(self) -> bool:
        if not self.server.loopback:
            return True
        host = self.headers.get("Host", "")
        name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        return _is_loopback(name)

    def _send(self, status: int, kind: str, body: bytes, headers: dict) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _feed(self) -> None:
        """Server-sent events until the run ends (its last state sent) or the browser goes."""
        server, live = self.server, self.server.live
        self.connection.settimeout(SEND_TIMEOUT_SECONDS)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        with server.feeds_ended:
            server.feeds += 1
        seen, version, sent = Seen(), -1, 0.0
        try:
            while not server.closing.is_set():
                version = live.wait(version, KEEPALIVE_SECONDS, server.closing.is_set)
                if server.closing.is_set():
                    break
                if version == seen.version:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                    continue
                if live.news == seen.news:  # numbers alone: sent with the next news, or after a while
                    live.wait_news(seen.news, sent + NUMBERS_SECONDS - time.monotonic(), server.closing.is_set)
                state, seen = live.snapshot(seen)
                sent = time.monotonic()
                self.wfile.write(b"data: " + json.dumps(state, default=str).encode() + b"\n\n")
                self.wfile.flush()
                if state["status"] in ("done", "interrupted", "failed"):
                    break
                time.sleep(1.0 / EVENTS_PER_SECOND)
        except OSError:  # the browser went away (or stopped reading): its feed ends, the run goes on
            pass
        finally:
            with server.feeds_ended:
                server.feeds -= 1
                server.feeds_ended.notify_all()


class PreviewServer:
    """The page of one run at http://HOST:PORT/, served on threads of its own.

    Binding happens here, so a port in use is a UserInputError naming `option` before anything
    else of the run happens. `close` waits (at most END_GRACE_SECONDS) for open pages to receive
    the run's end, then stops serving.
    """

    def __init__(self, address: Tuple[str, int], live: LiveRun, option: str = "--preview") -> None:
        host, port = address
        shown = f"{option} {f'[{host}]' if ':' in host else host}:{port}"
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as error:
            raise UserInputError(f"{shown}: cannot resolve the host ({error.strerror})") from None
        server_class = type("PreviewHTTPServer", (_Server,), {"address_family": family})
        try:
            self.server = server_class((host, port), _Handler)
        except OSError as error:
            why: Optional[str] = {errno.EADDRINUSE: "the port is in use (another program, or another run's preview); "
                                     "name another port, or 0 for any free one",
                   errno.EACCES: "not allowed to listen on that port (below 1024 needs privileges)",
                   errno.EADDRNOTAVAIL: "this machine has no such address"}.get(error.errno or 0)
            raise UserInputError(f"{shown}: {why or reason(error)}") from None
        self.server.live, self.server.closing = live, threading.Event()
        self.server.loopback = _is_loopback(host)
        self.server.feeds, self.server.feeds_ended = 0, threading.Condition()
        self.live = live
        self.host, self.port = host, self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="nst-jax preview server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def close(self, grace: Optional[float] = END_GRACE_SECONDS) -> None:
        """Stop serving; an ended run first waits up to `grace` seconds for its pages' feeds."""
        if self.live.ended and grace:
            with self.server.feeds_ended:
                self.server.feeds_ended.wait_for(lambda: self.server.feeds == 0, grace)
        self.server.closing.set()
        self.live.wake()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
