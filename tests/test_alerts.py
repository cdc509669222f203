"""Alert rules (repeated negative emotion, sustained arousal, no contact in a session), each rate-limited;
e-mail over STARTTLS to a real SMTP server (aiosmtpd) on 127.0.0.1; and the whole path in the daemon: an
alert over MQTT and by e-mail, with the SMTP password never in the log."""
from __future__ import annotations

import os
import ssl
import subprocess
import time

import pytest
from conftest import free_port
from webutil import Daemon

from pi.alerts import mail
from pi.alerts.rules import AlertEngine
from pi.clock import ManualClock
from pi.service import config

ALERT = "iotsensors/emotion-pi-01/alert"


def engine(**overrides):
    cfg = config.load(None, [f"alerts.{k}={v}" for k, v in overrides.items()])
    published, notified = [], []
    clock = ManualClock()
    e = AlertEngine(cfg["alerts"], "dev-1", "u", clock, lambda topic, m: published.append((topic, m)),
                    [notified.append])
    return e, clock, published, notified


def result(emotion, confidence, rid="r"):
    return {"emotion": emotion, "confidence": confidence, "request_id": rid}


def test_the_same_negative_emotion_n_times_in_a_row_fires_once_then_is_rate_limited():
    e, clock, published, notified = engine(negative_consecutive=3, negative_confidence=0.6, min_interval_s=600)
    for emotion, conf in [("sad", 0.9), ("sad", 0.8), ("angry", 0.9), ("sad", 0.7), ("sad", 0.5), ("sad", 0.9)]:
        assert e.on_result(result(emotion, conf)) is None  # broken by another emotion, or a weak result
    assert e.on_result(result("sad", 0.95, "r7")) is None
    fired = e.on_result(result("sad", 0.61, "r8"))
    assert fired is not None and fired["rule"] == "negative_emotion" and fired["emotion"] == "sad"
    assert fired["results"] == 3 and fired["request_ids"][-1] == "r8" and fired["type"] == "alert"
    assert published == [("iotsensors/emotion-pi-01/alert", fired)] and notified == [fired]
    for _ in range(3):
        assert e.on_result(result("sad", 0.9)) is None  # rate-limited
    clock.t += 601
    for _ in range(2):
        e.on_result(result("angry", 0.9))
    assert e.on_result(result("angry", 0.9))["emotion"] == "angry"
    assert e.on_result(result("uncertain", None)) is None and e.fired["negative_emotion"] == 2


def test_arousal_high_for_m_minutes_and_no_contact_during_a_session():
    e, clock, published, _ = engine(arousal_high_minutes=2, no_contact_minutes=1, min_interval_s=0)
    fired = []
    for t in range(0, 200):
        clock.t = t
        bpm = 60.0 if t == 50 else 100.0  # one calm second restarts the count
        got = e.on_second(t, 5.0, bpm, 1.0, in_session=False)
        if got:
            fired.append((t, got["rule"]))
    assert fired == [(171, "arousal_high")]
    fired = []
    for t in range(200, 400):
        clock.t = t
        got = e.on_second(t, None, None, 0.0, in_session=t >= 300)  # no contact, but a session only from 300
        if got:
            fired.append((t, got["rule"]))
    assert fired == [(360, "no_contact")]
    assert [m["rule"] for _, m in published] == ["arousal_high", "no_contact"]


@pytest.fixture(scope="module")
def smtp_cert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smtp-pki")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True)
    return folder


class SmtpServer:
    """aiosmtpd on 127.0.0.1 that requires STARTTLS and a login, and keeps what it is sent."""

    def __init__(self, cert_dir, user="carer-bot", password="s3cret-smtp-pass"):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.messages: list = []
        self.logins: list = []
        self.port = free_port()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_dir / "cert.pem", cert_dir / "key.pem")
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
                outer.messages.append(envelope)
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login.decode() == user and auth_data.password.decode() == password
            outer.logins.append(ok)
            return AuthResult(success=ok, handled=False)  # unhandled: the server answers 535 itself

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=context,
                                     require_starttls=True, authenticator=authenticator, auth_required=True,
                                     auth_exclude_mechanism=["LOGIN"])  # smtplib then uses PLAIN only
        self.controller.start()

    def wait(self, count: int, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self.messages) >= count

    def stop(self):
        self.controller.stop()


@pytest.fixture
def smtp(smtp_cert):
    server = SmtpServer(smtp_cert)
    yield server
    server.stop()


def email_cfg(smtp, smtp_cert, password="s3cret-smtp-pass"):
    return {"enabled": True, "host": "127.0.0.1", "port": smtp.port, "user": "carer-bot", "password": password,
            "password_file": None, "from": "device@example.org", "to": ["carer@example.org", "nurse@example.org"],
            "ca_file": str(smtp_cert / "cert.pem"), "timeout_s": 10.0}


def test_an_alert_is_mailed_over_starttls_with_a_login(smtp, smtp_cert):
    alert = {"schema": 1, "type": "alert", "device_id": "dev-1", "rule": "arousal_high",
             "message": "arousal high for 5.0 minutes", "timestamp": "2026-01-01T00:00:00.000Z"}
    mail.send(email_cfg(smtp, smtp_cert), alert)
    assert smtp.wait(1) and smtp.logins == [True]
    envelope = smtp.messages[0]
    assert envelope.mail_from == "device@example.org"
    assert envelope.rcpt_tos == ["carer@example.org", "nurse@example.org"]
    text = envelope.content.decode()
    assert "Subject: [emotion-edge dev-1] arousal_high: arousal high for 5.0 minutes" in text


def test_a_wrong_password_or_an_unknown_server_certificate_fails_without_leaking(smtp, smtp_cert, caplog):
    notifier = mail.EmailNotifier(email_cfg(smtp, smtp_cert, password="wrong-password-123"), attempts=1)
    notifier({"device_id": "d", "rule": "r", "message": "m", "msg_id": "x"})
    deadline = time.monotonic() + 20
    while not notifier.failed and time.monotonic() < deadline:
        time.sleep(0.1)
    notifier.close(5)
    assert notifier.failed == 1 and smtp.logins == [False]
    assert "wrong-password-123" not in caplog.text and "SMTPAuthenticationError" in caplog.text
    other = {**email_cfg(smtp, smtp_cert), "ca_file": None}  # the system CAs do not know our test server
    with pytest.raises(ssl.SSLError):
        mail.send(other, {"device_id": "d", "rule": "r", "message": "m"})
    assert smtp.messages == []


def test_the_daemon_publishes_an_alert_over_mqtt_and_mails_it(broker, recorder, smtp, smtp_cert, tmp_path):
    password_file = tmp_path / "smtp-password"
    password_file.write_text("s3cret-smtp-pass\n")
    os.chmod(password_file, 0o600)
    rec = recorder([ALERT])
    d = Daemon(broker, tmp_path / "data", "sim.bpm=120", "alerts.arousal_high_minutes=0.05",
               "email.enabled=true", "email.host=127.0.0.1", f"email.port={smtp.port}", "email.user=carer-bot",
               f"email.password_file={password_file}", "email.from=device@example.org",
               "email.to=[carer@example.org]", f"email.ca_file={smtp_cert / 'cert.pem'}")
    try:
        assert rec.wait_for(lambda: len(rec.on(ALERT)) >= 1, 40), d.log_text()
        alert = rec.on(ALERT)[0]
        assert alert["rule"] == "arousal_high" and alert["device_id"] == "emotion-pi-01" and alert["bpm"] >= 90
        assert smtp.wait(1, 30) and "arousal_high" in smtp.messages[0].content.decode()
        status = d.api("GET", "/api/status")[1]
        assert status["alerts"][0]["msg_id"] == alert["msg_id"]
        time.sleep(4)
        assert len(rec.on(ALERT)) == 1  # rate-limited: alerts.min_interval_s
    finally:
        d.stop()
    assert "s3cret-smtp-pass" not in d.log_text()


def test_email_config_is_checked(tmp_path):
    from pi.errors import ConfigError

    with pytest.raises(ConfigError) as excinfo:
        config.load(None, ["email.enabled=true"])
    for key in ("email.host", "email.from", "email.to"):
        assert key in str(excinfo.value)
    loose = tmp_path / "pw"
    loose.write_text("x\n")
    os.chmod(loose, 0o644)
    with pytest.raises(ConfigError) as excinfo:
        config.load(None, [f"email.password_file={loose}"])
    assert "chmod 600" in str(excinfo.value)
    with pytest.raises(ConfigError) as excinfo:
        config.load(None, ["alerts.negative_emotions=[sad, bored]"])
    assert "alerts.negative_emotions" in str(excinfo.value)
