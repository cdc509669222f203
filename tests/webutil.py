"""Helpers for the dashboard tests: `emotion-edge run --simulate` in a subprocess with its web server on a
free loopback port, and a tiny HTTP client (urllib) that returns status, JSON and headers."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import ROOT, free_port


def http(method: str, url: str, body: bytes | dict | None = None, headers: dict | None = None,
         timeout: float = 10) -> tuple[int, object, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = dict(headers or {})
    if isinstance(body, dict):
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as r:
            status, raw, got = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), dict(exc.headers)
    try:
        parsed: object = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw
    return status, parsed, got


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Daemon:
    """`emotion-edge run --simulate` with the dashboard on 127.0.0.1:<free port>."""

    def __init__(self, broker, data_dir: Path, *extra: str, token: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.data_dir = data_dir
        args = ["run", "--simulate", "--set", f"mqtt.port={broker.port}", "--set", f"web.port={self.port}",
                "--set", f"device.data_dir={data_dir}", "--set", "log.format=text", "--set", "log.level=DEBUG"]
        for item in extra:
            args += ["--set", item]
        self.log = data_dir.parent / f"daemon-{self.port}.log"
        self._log = open(self.log, "w")  # noqa: SIM115 (the daemon writes to it until stop())
        self.proc = subprocess.Popen([sys.executable, "-m", "pi", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                status, _, _ = http("GET", self.url + "/api/status", headers=self.auth(), timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"dashboard did not answer: {self.log.read_text()}")

    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def api(self, method: str, path: str, body=None, headers: dict | None = None):
        return http(method, self.url + path, body, {**self.auth(), **(headers or {})})

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text()
