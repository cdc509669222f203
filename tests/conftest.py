"""Shared fixtures: a real Mosquitto broker on 127.0.0.1, an MQTT recorder, a manual clock."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FER_PUBLIC = SHARED / "datasets" / "fer2013" / "fer2013_publictest.npz"
SHARED_MISSING = "../shared (the read-only data sets beside the project root) is absent: a real user's checkout"


def needs_shared(*paths: Path):
    """Skip, with the one reason, a test that reads data sets from ../shared when they are not there."""
    return pytest.mark.skipif(not all(p.exists() for p in paths), reason=SHARED_MISSING)


needs_fer2013 = needs_shared(FER_PUBLIC)
E2E_FIXTURES = {"broker", "recorder"}
E2E_CALLS = ("run_cli(", "start_cli(", "subprocess.")


def pytest_collection_modifyitems(items):
    """`e2e` marks every test that needs a real Mosquitto or runs the CLI in a subprocess, so that
    `pytest -m "not e2e"` is the fast loop; found from the fixtures and calls a test uses."""
    import inspect

    for item in items:
        if item.get_closest_marker("e2e"):
            continue
        uses_broker = E2E_FIXTURES & set(getattr(item, "fixturenames", ()))
        try:
            source = inspect.getsource(item.function)
        except (OSError, TypeError, AttributeError):
            source = ""
        if uses_broker or any(call in source for call in E2E_CALLS):
            item.add_marker(pytest.mark.e2e)
sys.path.insert(0, str(ROOT))

from pi.clock import ManualClock  # noqa: E402
from pi.loopback import free_port  # noqa: E402,F401  (tests import it from here)


@pytest.fixture
def manual_clock():
    return ManualClock()


class Broker:
    """A Mosquitto process on 127.0.0.1 that a test can stop and start again on the same port."""

    # started as root, mosquitto drops to the 'mosquitto' user, which cannot read pytest's private tmp dirs
    run_as = "user root\n" if os.geteuid() == 0 else ""

    def __init__(self, workdir: Path, persistent: bool = False):
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        persistence = (f"persistence true\npersistence_location {workdir}/\n" if persistent
                       else "persistence false\n")
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{persistence}{self.run_as}")
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None


@pytest.fixture
def broker(tmp_path, request):
    if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        pytest.fail("mosquitto is not installed (apt-get install -y mosquitto); .ci/run installs it")
    b = Broker(tmp_path, persistent=bool(request.node.get_closest_marker("persistent_broker")))
    b.start()
    yield b
    b.stop()


class Recorder:
    """Subscribes to topics on the test broker and keeps every message, decoded from JSON."""

    def __init__(self, port: int, topics: list[str], persistent_session: bool = False):
        self.messages: list[tuple[str, dict | bytes]] = []
        self._cond = threading.Condition()
        # a persistent session (with a persistent broker) keeps our subscription and queue across restarts
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"recorder-{free_port()}",
                                  clean_session=not persistent_session)
        self.client.reconnect_delay_set(0.1, 0.5)
        self._subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "recorder could not subscribe"

    def _on_message(self, client, userdata, msg):
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = msg.payload
        with self._cond:
            self.messages.append((msg.topic, payload))
            self._cond.notify_all()

    def on(self, topic: str) -> list:
        with self._cond:
            return [p for t, p in self.messages if t == topic]

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def recorder(broker):
    recorders = []

    def make(topics=("iotsensors/#",), persistent_session=False):
        r = Recorder(broker.port, list(topics), persistent_session)
        recorders.append(r)
        return r

    yield make
    for r in recorders:
        r.close()


def run_cli(*args: str, timeout: float = 90, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m pi ...` from the project root, as a user would."""
    return subprocess.run([sys.executable, "-m", "pi", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kwargs)
