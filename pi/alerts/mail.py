"""Alert e-mail straight from the device: SMTP with STARTTLS (certificate verified), optional login.

Sending runs on its own thread behind a small queue, so a slow or absent mail server never holds up the
rules or the sampler. The password is never logged; failures are logged with the server's reason."""
from __future__ import annotations

import logging
import queue
import smtplib
import ssl
import threading
from email.message import EmailMessage

log = logging.getLogger(__name__)


def compose(email_cfg: dict, alert: dict) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = email_cfg["from"]
    msg["To"] = ", ".join(email_cfg["to"])
    msg["Subject"] = f"[emotion-edge {alert['device_id']}] {alert['rule']}: {alert['message']}"
    lines = [alert["message"], "", *(f"{k}: {v}" for k, v in alert.items() if k not in ("message", "schema"))]
    msg.set_content("\n".join(lines))
    return msg


def send(email_cfg: dict, alert: dict) -> None:
    """Send one alert now (raises smtplib.SMTPException, ssl.SSLError or OSError on failure)."""
    context = ssl.create_default_context(cafile=email_cfg["ca_file"])
    with smtplib.SMTP(email_cfg["host"], email_cfg["port"], timeout=email_cfg["timeout_s"]) as smtp:
        smtp.ehlo()
        smtp.starttls(context=context)  # refuses to go on in clear text: no fallback
        smtp.ehlo()
        if email_cfg["user"]:
            smtp.login(email_cfg["user"], email_cfg["password"] or "")
        smtp.send_message(compose(email_cfg, alert))


class EmailNotifier:
    """Callable notifier: queues the alert for the mail thread (drops, logged, when 20 are waiting)."""

    def __init__(self, email_cfg: dict, attempts: int = 3, retry_s: float = 10.0):
        self.cfg = email_cfg
        self.attempts, self.retry_s = attempts, retry_s
        self.sent = self.failed = 0
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=20)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-mail", daemon=True)
        self._thread.start()

    def __call__(self, alert: dict) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.failed += 1
            log.error("alert e-mail queue full; not mailing alert %s", alert.get("msg_id"))

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            for attempt in range(1, self.attempts + 1):
                try:
                    send(self.cfg, alert)
                    self.sent += 1
                    log.info("alert %s mailed to %d recipient(s)", alert.get("rule"), len(self.cfg["to"]))
                    break
                except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
                    log.error("alert e-mail via %s:%s failed (attempt %d of %d): %s: %s", self.cfg["host"],
                              self.cfg["port"], attempt, self.attempts, type(exc).__name__, exc)
                    if attempt == self.attempts or self._stop.wait(self.retry_s):
                        self.failed += 1
                        break

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout)
