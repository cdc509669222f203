"""The dashboard's HTTP API against `emotion-edge run --simulate` and a real Mosquitto: the same strict
parsing as MQTT commands, request ids that match the published results, the token, cross-site refusal,
the rate limit, the event stream, and a slow viewer that is dropped rather than waited for."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import time

import pytest
from conftest import run_cli
from webutil import Daemon, http

RESULT = "iotsensors/infer/result"


@pytest.fixture
def daemon(broker, tmp_path):
    d = Daemon(broker, tmp_path / "data", "detect.window_s=2")
    yield d
    d.stop()


def test_detect_answers_at_once_and_the_result_carries_its_request_id(daemon, recorder):
    rec = recorder([RESULT])
    started = time.monotonic()
    status, body, _ = daemon.api("POST", "/api/detect", {"window_s": 2})
    assert status == 202 and time.monotonic() - started < 1.0, body
    request_id = body["request_id"]
    assert rec.wait_for(lambda: any(r["request_id"] == request_id for r in rec.on(RESULT)), 30)
    status, listing, _ = daemon.api("GET", "/api/results?limit=5")
    assert status == 200 and listing["results"][0]["request_id"] == request_id
    assert listing["users"] == ["default"] and listing["results"][0]["feedback_label"] is None
    day = listing["results"][0]["timestamp"][:10]
    assert daemon.api("GET", f"/api/results?day={day}&user=default")[1]["results"][0]["request_id"] == request_id
    assert daemon.api("GET", "/api/results?day=1999-01-01")[1]["results"] == []


def test_bad_bodies_get_400_naming_the_field_and_the_daemon_keeps_serving(daemon, recorder):
    rec = recorder(["iotsensors/train", RESULT])
    cases = [
        ("/api/detect", {"window_s": "ten"}, "window_s"),
        ("/api/detect", {"window_s": 0}, "window_s"),
        ("/api/detect", {"request_id": "has space"}, "request_id"),
        ("/api/detect", {"colour": "red"}, None),
        ("/api/collect", {"label": "ecstatic", "duration_s": 3}, None),
        ("/api/collect", {"label": "happy"}, "duration_s"),
        ("/api/feedback", {"request_id": "abc", "label": "bored"}, "label"),
        ("/api/feedback", {"label": "sad"}, "request_id"),
        ("/api/stop", {"now": True}, None),
    ]
    for path, body, field in cases:
        status, answer, _ = daemon.api("POST", path, body)
        assert status == 400, (path, body, answer)
        if field:
            assert answer["field"] == field and field in answer["error"], answer
    assert "ecstatic" in daemon.api("POST", "/api/collect", {"label": "ecstatic", "duration_s": 3})[1]["error"]
    assert "colour" in daemon.api("POST", "/api/detect", {"colour": "red"})[1]["error"]
    # hostile JSON: more digits than any window, nesting far deeper than any command (Python's parser would
    # raise RecursionError on the second if the body were read before the commands' hardened reader)
    for body in (b'{"window_s": ' + b"9" * 400 + b"}", b'{"a": ' * 2000 + b"1" + b"}" * 2000):
        status, answer, _ = daemon.api("POST", "/api/detect", body, {"Content-Type": "application/json"})
        assert status == 400 and ("digits" in answer["error"] or "nested" in answer["error"]), answer
    status, answer, _ = daemon.api("POST", "/api/detect", b"not json", {"Content-Type": "application/json"})
    assert status == 400 and "not JSON" in answer["error"]
    status, answer, _ = daemon.api("POST", "/api/detect", {"command": "collect"})
    assert status == 400 and "command" in answer["error"]
    status, _, _ = daemon.api("POST", "/api/detect", b'{"x": "' + b"y" * 20000 + b'"}',
                              {"Content-Type": "application/json"})
    assert status == 413
    assert daemon.api("GET", "/api/results?limit=abc")[1]["field"] == "limit"
    assert daemon.api("GET", "/api/results?day=yesterday")[1]["field"] == "day"
    assert daemon.api("GET", "/api/nothing")[0] == 404
    assert daemon.api("POST", "/api/feedback", {"request_id": "unknown-id", "label": "sad"})[0] == 404
    assert daemon.proc.poll() is None

    # the same endpoints, used properly: collect, stop it early, detect, correct the result
    assert daemon.api("POST", "/api/collect", {"label": "happy", "duration_s": 30})[0] == 202
    assert rec.wait_for(lambda: len(rec.on("iotsensors/train")) >= 2, 20)
    status, answer, _ = daemon.api("POST", "/api/stop", {})
    assert status == 200 and answer["stopping"] == "collect"
    status, answer, _ = daemon.api("POST", "/api/detect", {"window_s": 1, "request_id": "web-req-1"})
    assert status == 202 and answer["request_id"] == "web-req-1"
    assert rec.wait_for(lambda: any(r["request_id"] == "web-req-1" for r in rec.on(RESULT)), 30)
    assert len(rec.on("iotsensors/train")) < 30  # the stop ended the session
    assert daemon.api("POST", "/api/detect", {"window_s": 1, "request_id": "web-req-1"})[0] == 409
    assert daemon.api("POST", "/api/feedback", {"request_id": "web-req-1", "label": "sad"})[0] == 202
    db = sqlite3.connect(daemon.data_dir / "records.sqlite")
    deadline = time.monotonic() + 10
    row = None
    while row is None and time.monotonic() < deadline:
        row = db.execute("SELECT label FROM feedback WHERE request_id = 'web-req-1'").fetchone()
        time.sleep(0.2)
    assert row == ("sad",)
    assert daemon.api("GET", "/api/results")[1]["results"][0]["feedback_label"] == "sad"
    assert daemon.proc.poll() is None


def test_cross_site_posts_and_foreign_host_names_are_refused(daemon):
    url = daemon.url + "/api/detect"
    assert http("POST", url, b"{}", {"Content-Type": "text/plain"})[0] == 403  # a plain cross-site form
    assert http("POST", url, {}, {"Origin": "http://evil.example"})[0] == 403
    assert http("POST", url, {}, {"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert http("GET", daemon.url + "/api/status", headers={"Host": "evil.example"})[0] == 403  # DNS rebinding
    assert http("POST", url, {}, {"Origin": daemon.url})[0] == 202


def test_detections_are_rate_limited(broker, tmp_path):
    d = Daemon(broker, tmp_path / "data", "web.detect_per_minute=2", "detect.window_s=1")
    try:
        assert [d.api("POST", "/api/detect", {})[0] for _ in range(2)] == [202, 202]
        status, answer, headers = d.api("POST", "/api/detect", {})
        assert status == 429 and "2 detections a minute" in answer["error"] and int(headers["Retry-After"]) > 0
    finally:
        d.stop()


def test_the_token_guards_every_request_and_never_reaches_the_log(broker, tmp_path):
    data = tmp_path / "data"
    made = run_cli("web-token", "--set", f"device.data_dir={data}", "--set", "web.bind=0.0.0.0")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    path = data / "web-token"
    assert len(token) >= 32 and path.read_text().strip() == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert token not in made.stderr
    d = Daemon(broker, data, token=token)
    try:
        for target in ("/", "/static/app.js", "/api/status", "/api/events", "/api/results"):
            status, answer, headers = http("GET", d.url + target)
            assert status == 401 and "token" in answer["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        assert http("POST", d.url + "/api/detect", {})[0] == 401
        assert http("GET", d.url + "/api/status", headers={"Authorization": "Bearer " + "x" * 43})[0] == 401
        assert d.api("GET", "/api/status")[0] == 200
        assert http("GET", d.url + "/?token=wrong-token-xxxxxxxx")[0] == 401
        status, _, headers = http("GET", d.url + f"/?token={token}")
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        status, page, _ = http("GET", d.url + "/", headers={"Cookie": cookie})
        assert status == 200 and b"Detect my emotion" in page
        assert http("GET", d.url + "/api/status", headers={"Cookie": cookie})[0] == 200
        assert http("POST", d.url + "/api/detect", {"window_s": 1}, {"Cookie": cookie})[0] == 202
    finally:
        d.stop()
    assert token not in d.log_text()
    shown = run_cli("check-config", "--set", f"device.data_dir={data}")
    assert shown.returncode == 0 and token not in shown.stdout + shown.stderr and "********" in shown.stdout


def test_binding_beyond_loopback_without_a_token_is_a_config_error_that_says_how(tmp_path):
    result = run_cli("check-config", "--set", "web.bind=0.0.0.0", "--set", f"device.data_dir={tmp_path}")
    assert result.returncode == 2
    assert "web.bind" in result.stderr and "emotion-edge web-token" in result.stderr
    result = run_cli("check-config", "--set", "web.bind=0.0.0.0", "--set", "web.token=short")
    assert result.returncode == 2 and "web.token" in result.stderr and "short" not in result.stderr
    result = run_cli("check-config", "--set", "web.bind=0.0.0.0", "--set", "web.token=a-long-enough-token-123",
                     "--set", f"device.data_dir={tmp_path}")
    assert result.returncode == 0 and "a-long-enough-token-123" not in result.stdout
    result = run_cli("check-config", "--set", "web.bind=localhost")
    assert result.returncode == 2 and "IP address" in result.stderr


def read_events(url: str, seconds: float, headers: dict | None = None) -> list[tuple[str, dict]]:
    """Read a server-sent event stream over a raw socket for `seconds`."""
    host, port = url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=seconds + 5)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode())
    buf, deadline = b"", time.monotonic() + seconds
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        buf += chunk
    sock.close()
    head, _, stream = buf.partition(b"\r\n\r\n")
    assert b"200" in head.split(b"\r\n")[0] and b"text/event-stream" in head, head
    events = []
    for block in stream.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_the_event_stream_sends_seconds_results_and_status(daemon):
    assert daemon.api("POST", "/api/detect", {"window_s": 1})[0] == 202
    events = read_events(daemon.url, 6)
    kinds = [k for k, _ in events]
    assert kinds[0] == "status" and kinds.count("second") >= 4 and "result" in kinds, kinds
    second = next(d for k, d in events if k == "second")
    for key in ("wall", "emitted", "skin_conductance", "bpm", "contact", "hr_quality", "quality", "arousal", "job"):
        assert key in second
    result = next(d for k, d in events if k == "result")
    assert "p_happy" in result and not any("frame" in k and k != "frames" for k in result)
    status = daemon.api("GET", "/api/status")[1]
    for key in ("broker", "outbox", "hat", "camera", "face_model", "personal_model", "uptime_s"):
        assert key in status
    assert status["broker"]["connected"] is True and status["hat"]["state"] == "ok"


def test_a_viewer_that_stops_reading_is_dropped_and_the_others_keep_up(broker, tmp_path):
    """In process: the hub's fan-out never waits on a full queue."""
    from pi.service import config
    from pi.service.daemon import Daemon as ServiceDaemon
    from pi.service.device import create
    from pi.web.hub import Hub

    cfg = config.load(None, [f"mqtt.port={broker.port}", f"device.data_dir={tmp_path}"])
    device = create(cfg, simulate=True)
    try:
        hub = Hub(ServiceDaemon(device), queue_size=8)
        slow, fast = hub.subscribe(), hub.subscribe()
        assert slow is not None and fast is not None and hub.clients == 2
        got = []
        started = time.monotonic()
        for i in range(50):
            hub.broadcast("second", {"i": i})
            got.append(fast.queue.get_nowait())
        assert time.monotonic() - started < 0.5
        assert slow.dropped and hub.clients == 1 and len(got) == 50 and not fast.dropped
    finally:
        device.stop()


def test_the_hubs_alerts_and_arousal_use_only_heart_rates_that_pass_the_quality_gate():
    """A moving wrist reads a plausible 100 BPM that the gate rejects: no arousal alert, no 'high' from it."""
    from types import SimpleNamespace

    from pi.clock import ManualClock
    from pi.physiology.sampler import HR_QUALITY_MIN, SecondRecord
    from pi.service import config
    from pi.web.hub import Hub

    cfg = config.load(None, ["alerts.enabled=true", "alerts.arousal_high_minutes=2", "alerts.min_interval_s=0"])
    clock = ManualClock()
    published = []
    device = SimpleNamespace(device_id="dev", user="u", clock=clock, result_listeners=[],
                             publisher=SimpleNamespace(publish=lambda topic, message, **kw: published.append(message)))
    hub = Hub(SimpleNamespace(device=device, cfg=cfg, active=None))
    for quality, fires in ((HR_QUALITY_MIN - 0.2, False), (HR_QUALITY_MIN, True)):
        before = hub.alerts.fired["arousal_high"]
        for _ in range(200):
            clock.t += 1
            hub._on_second(clock.t, SecondRecord(t=clock.t, wall=clock.wall(), skin_conductance=5.0, bpm=100.0,
                                                 contact=1.0, hr_quality=quality, samples=50, i2c_errors=0,
                                                 late_ticks=0))
        assert (hub.alerts.fired["arousal_high"] > before) is fires, quality
        assert hub.seconds[-1]["arousal"] == ("high" if fires else "moderate")
        assert hub.seconds[-1]["bpm"] == 100.0  # the live view still shows what the sensor read
    assert [m["rule"] for m in published] == ["arousal_high"]


def test_no_more_streams_than_web_max_clients(broker, tmp_path):
    d = Daemon(broker, tmp_path / "data", "web.max_clients=1")
    try:
        first = socket.create_connection(("127.0.0.1", d.port))
        first.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\n\r\n".encode())
        assert b"200" in first.recv(200)
        status, answer, _ = d.api("GET", "/api/events")
        assert status == 503 and "web.max_clients" in answer["error"]
        first.close()
    finally:
        d.stop()
