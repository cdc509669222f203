"""The dashboard's HTTP server: the page, its static files, the JSON API and the event stream.

The standard library's ThreadingHTTPServer, on its own threads, never the sampler's: one thread per
connection, each event stream reading its own bounded queue from the hub (README, "Dashboard", has the
measured RSS and latency behind choosing it over an async framework on a Pi 3).

Security: with a token (web.token, or the data directory's token file), every request needs it, as
`Authorization: Bearer <token>` or the HttpOnly, SameSite=Strict cookie that opening `/?token=<token>`
once sets. Without one the server answers only to loopback host names (no DNS rebinding). POSTs need a
JSON content type and a same-origin Origin (no cross-site requests); detections are rate-limited. No face
image or frame is ever served, stored or logged: the API has none to give. The token never reaches a log.
"""
from __future__ import annotations

import hmac
import json
import logging
import mimetypes
import re
import threading
import time
from collections import deque
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pi.errors import CommandError
from pi.messaging.commands import MAX_COMMAND_BYTES, Collect, Detect, json_object, parse_command, parse_feedback
from pi.service.device import new_id
from pi.web.hub import Hub

log = logging.getLogger(__name__)

COOKIE = "ee_token"
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
USER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def load_static() -> dict[str, tuple[bytes, str]]:
    """Every shipped static file, read once: /static/<name> -> (bytes, content type)."""
    root = resources.files("pi.web") / "static"
    files: dict[str, tuple[bytes, str]] = {}

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif not entry.name.startswith("."):
                kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                if kind.startswith("text/") or kind.endswith("javascript"):
                    kind += "; charset=utf-8"
                files[f"{prefix}{entry.name}"] = (entry.read_bytes(), kind)

    walk(root, "")
    return files


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.extra = status, extra


def field_of(message: str) -> str | None:
    """The field a parser's message names ('window_s' must be ...), for the JSON error's `field`."""
    found = re.search(r"'([A-Za-z_]+)'", message)
    return found.group(1) if found else None


def as_command(body: bytes, kind: str, **extra: Any) -> bytes:
    """An API body as the MQTT command it stands for, so the same strict parser judges it; a body that is
    not a (safe) JSON object is refused with the parser's own words (CommandError)."""
    obj = json_object(body, "request body") if body.strip() else {}  # the commands' own hardened reader
    if "command" in obj:
        raise CommandError("unknown field(s) for this endpoint: command (the URL names the command)")
    return json.dumps({"command": kind, **obj, **extra}).encode()


class RateLimit:
    """At most `per_minute` events in any 60 s (monotonic)."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 if allowed (and counted), else the seconds until one would be."""
        now = time.monotonic()
        with self._lock:
            while self._times and now - self._times[0] >= 60:
                self._times.popleft()
            if len(self._times) >= self.per_minute:
                return 60 - (now - self._times[0])
            self._times.append(now)
            return 0.0


class WebApp:
    """What the handler threads share: config, hub, daemon, token, static files, rate limit."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.daemon = hub.daemon
        self.cfg = hub.cfg
        self.token: str | None = self.cfg["web"]["token"]
        self.static = load_static()
        self.detect_limit = RateLimit(self.cfg["web"]["detect_per_minute"])
        self.port = self.cfg["web"]["port"]

    # -- API ---------------------------------------------------------------------------------------
    def get(self, path: str, query: dict[str, list[str]]) -> dict | list:
        if path == "/api/status":
            return self.hub.status()
        if path == "/api/seconds":
            return list(self.hub.seconds)
        if path == "/api/results":
            return self.results(query)
        raise ApiError(404, f"no such endpoint: GET {path}")

    def results(self, query: dict[str, list[str]]) -> dict:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        limit_text = one("limit") or "50"
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
            raise ApiError(400, "'limit' must be a whole number from 1 to 1000", field="limit")
        day, user = one("day"), one("user")
        if day and not DAY_RE.fullmatch(day):
            raise ApiError(400, "'day' must be a date YYYY-MM-DD (UTC)", field="day")
        if user and not USER_RE.fullmatch(user):
            raise ApiError(400, "'user' must be 1-64 characters of letters, digits, _ . -", field="user")
        store = self.hub.device.store
        return {"results": store.recent_detections(int(limit_text), user, day), "users": store.detection_users()}

    def post(self, path: str, body: bytes) -> tuple[int, dict]:
        if len(body) > MAX_COMMAND_BYTES:
            raise ApiError(413, f"body is {len(body)} bytes; the limit is {MAX_COMMAND_BYTES}")
        cfg = self.cfg
        try:
            if path == "/api/detect":
                payload = as_command(body, "detect")
                try:
                    obj = json.loads(payload)
                except ValueError:
                    obj = None  # not JSON: the parser says so below
                if isinstance(obj, dict) and "request_id" not in obj:
                    payload = as_command(body, "detect", request_id=new_id())
                command = parse_command(payload, cfg["collect"]["labels"])
                if not isinstance(command, Detect):  # as_command set "command": "detect"; a body cannot change it
                    raise ApiError(400, "the body must be a detect request", field="command")
                wait = self.detect_limit.take()
                if wait:
                    raise ApiError(429, f"at most {cfg['web']['detect_per_minute']} detections a minute; "
                                        f"try again in {wait:.0f} s", retry_after=int(wait) + 1)
                if self.hub.device.store.detection(command.request_id) is not None:
                    raise ApiError(409, f"request_id {command.request_id!r} was already used", field="request_id")
                self._submit(command)
                return 202, {"request_id": command.request_id,
                             "window_s": command.window_s or cfg["detect"]["window_s"]}
            if path == "/api/collect":
                command = parse_command(as_command(body, "collect"), cfg["collect"]["labels"])
                if not isinstance(command, Collect):
                    raise ApiError(400, "the body must be a collect request", field="command")
                self._submit(command)
                return 202, {"accepted": True, "label": command.label, "duration_s": command.duration_s}
            if path == "/api/stop":
                parse_command(as_command(body, "stop"), cfg["collect"]["labels"])
                job = self.hub.job()
                self.daemon.stop_session()
                return 200, {"stopping": job["kind"] if job and job["kind"] == "collect" else None}
            if path == "/api/feedback":
                feedback = parse_feedback(body, cfg["detect"]["emotions"])
                if self.hub.device.store.detection(feedback.request_id) is None:
                    raise ApiError(404, f"no detection with request_id {feedback.request_id!r} on this device",
                                   field="request_id")
                self._submit(feedback)
                return 202, {"accepted": True, "request_id": feedback.request_id, "label": feedback.label}
        except CommandError as exc:
            raise ApiError(400, str(exc), field=field_of(str(exc))) from None
        raise ApiError(404, f"no such endpoint: POST {path}")

    def _submit(self, job) -> None:
        if not self.daemon.submit(job):
            raise ApiError(503, "busy: 32 jobs already waiting")

    # -- security ------------------------------------------------------------------------------------
    def token_ok(self, headers, cookie_header: str | None) -> bool:
        if self.token is None:
            return True
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        if cookie_header:
            try:
                jar = SimpleCookie(cookie_header)
            except Exception:
                return False
            morsel = jar.get(COOKIE)
            if morsel is not None and hmac.compare_digest(morsel.value.encode(), self.token.encode()):
                return True
        return False

    def host_ok(self, host: str | None) -> bool:
        """Without a token, only loopback names (a rebinding site's name would be refused)."""
        if self.token is not None:
            return True
        if not host:
            return False
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in LOOPBACK_NAMES or name == self.cfg["web"]["bind"]


def make_handler(app: WebApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "emotion-edge"
        sys_version = ""
        timeout = 30  # a socket that says nothing (or takes no bytes) for 30 s is closed

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass  # requests are logged by _log, without query strings (a ?token= must never reach a log)

        def _log(self, status: int) -> None:
            log.debug("%s %s -> %d", self.command, urlsplit(self.path).path, status)

        # -- responses --------------------------------------------------------------------------------
        def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy", CSP)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self._log(status)

        def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json", headers)

        def _error(self, status: int, message: str, **extra: Any) -> None:
            headers = {}
            if status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="emotion-edge"'
            if "retry_after" in extra:
                headers["Retry-After"] = str(extra.pop("retry_after"))
            self._json(status, {"error": message, **extra}, headers)

        def _guard(self) -> bool:
            """Host and token checks every request passes first; False when already answered."""
            if not app.host_ok(self.headers.get("Host")):
                self._error(403, "unknown Host: open the dashboard as http://127.0.0.1:<port>/")
                return False
            if not app.token_ok(self.headers, self.headers.get("Cookie")):
                self._error(401, "a token is required: Authorization: Bearer <token>, or open /?token=<token> "
                                 "once (emotion-edge web-token prints it)")
                return False
            return True

        # -- methods --------------------------------------------------------------------------------
        def do_GET(self) -> None:  # noqa: N802 (the base class's naming)
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/" and "token" in query and app.token is not None:
                given = query["token"][-1]
                if not hmac.compare_digest(given.encode(), app.token.encode()):
                    self._error(401, "wrong token")
                    return
                self._send(303, b"", "text/plain", {
                    "Location": "/", "Set-Cookie": f"{COOKIE}={app.token}; HttpOnly; SameSite=Strict; Path=/"})
                return
            if not self._guard():
                return
            try:
                if url.path in ("/", "/index.html"):
                    body, kind = app.static["index.html"]
                    self._send(200, body, kind)
                elif url.path.startswith("/static/"):
                    found = app.static.get(url.path[len("/static/"):])
                    if found is None:
                        self._error(404, "no such file")
                    else:
                        self._send(200, found[0], found[1])
                elif url.path == "/api/events":
                    self._events()
                else:
                    self._json(200, app.get(url.path, query))
            except ApiError as exc:
                self._error(exc.status, str(exc), **exc.extra)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True

        do_HEAD = do_GET

        def do_POST(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            length_text = self.headers.get("Content-Length", "0")
            if not length_text.isdigit():
                self._error(400, "'Content-Length' must be a number")
                self.close_connection = True
                return
            length = int(length_text)
            if length > MAX_COMMAND_BYTES:
                self._error(413, f"body is {length} bytes; the limit is {MAX_COMMAND_BYTES}")
                self.close_connection = True
                return
            body = self.rfile.read(length) if length else b""
            if not self._guard():
                return
            if not self._same_origin():
                self._error(403, "cross-site request refused: POST from the dashboard's own page, with "
                                 "Content-Type: application/json")
                return
            try:
                status, obj = app.post(url.path, body)
                self._json(status, obj)
            except ApiError as exc:
                self._error(exc.status, str(exc), **exc.extra)
            except Exception as exc:  # a bug costs this request, never the daemon
                log.exception("POST %s failed", url.path)
                self._error(500, f"internal error: {type(exc).__name__}")

        def do_PUT(self) -> None:  # noqa: N802
            self._error(405, "method not allowed")

        do_DELETE = do_PATCH = do_PUT

        def _same_origin(self) -> bool:
            """Cross-site POSTs cannot send application/json without a CORS preflight, which is never
            answered; the Origin (sent by browsers) must name this very host, and Fetch metadata agree."""
            if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
                return False
            origin = self.headers.get("Origin")
            if origin is not None and origin != f"http://{self.headers.get('Host')}":
                return False
            return self.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")

        def _events(self) -> None:
            """Server-sent events: `second`, `result`, `status`, `alert`; a comment every 15 s of quiet."""
            sub = app.hub.subscribe()
            if sub is None:
                self._error(503, f"already serving {app.cfg['web']['max_clients']} live streams (web.max_clients)")
                return
            self.close_connection = True
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Accel-Buffering", "no")
                self.send_header("Connection", "close")
                self.end_headers()
                self._log(200)
                status = json.dumps(app.hub.status(), allow_nan=False)
                self.wfile.write(f"retry: 2000\n\nevent: status\ndata: {status}\n\n".encode())
                self.wfile.flush()
                while not sub.dropped:
                    try:
                        item = sub.queue.get(timeout=15)
                    except Exception:  # queue.Empty: keep the connection (and proxies) awake
                        self.wfile.write(b": quiet\n\n")
                        self.wfile.flush()
                        continue
                    if item is None or sub.dropped:
                        break
                    event, data = item
                    self.wfile.write(f"event: {event}\ndata: {data}\n\n".encode())
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
                pass  # the viewer went away (or stopped reading for `timeout` s)
            finally:
                app.hub.unsubscribe(sub)

    return Handler


class WebServer:
    """A Daemon service: serves on web.bind:web.port from its own thread; a port in use is logged and the
    device goes on without its dashboard (sampling and MQTT matter more)."""

    def __init__(self, hub: Hub):
        self.app = WebApp(hub)
        self.cfg = hub.cfg["web"]
        self.httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    def start(self) -> None:
        try:
            httpd = ThreadingHTTPServer((self.cfg["bind"], self.cfg["port"]), make_handler(self.app))
        except OSError as exc:
            log.error("dashboard not served: cannot listen on %s:%s: %s (set web.port, or web.enabled: false)",
                      self.cfg["bind"], self.cfg["port"], exc.strerror or exc)
            return
        httpd.daemon_threads = True
        self.httpd = httpd
        port = httpd.server_address[1]
        host = self.cfg["bind"] if self.cfg["bind"] not in ("0.0.0.0", "::") else "127.0.0.1"
        self.url = f"http://{host}:{port}/"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.5}, name="web",
                                        daemon=True)
        self._thread.start()
        log.info("dashboard at %s%s", self.url, " (token required)" if self.app.token else "")

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
