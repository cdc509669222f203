"""Faults done for real: a broker that goes away mid-session, a daemon killed with SIGKILL, a full outbox."""
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import ROOT, free_port

from pi.messaging.outbox import Outbox

TRAIN = "iotsensors/train"
ERRORS = "iotsensors/emotion-pi-01/error"


def start_cli(*args):
    return subprocess.Popen([sys.executable, "-m", "pi", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.persistent_broker
def test_broker_down_30s_in_a_60s_session_loses_nothing(broker, recorder, tmp_path):
    rec = recorder([TRAIN], persistent_session=True)
    proc = start_cli("collect", "--simulate", "--label", "angry", "--duration", "60", "--set",
                     f"mqtt.port={broker.port}", "--set", f"device.data_dir={tmp_path}", "--set",
                     "mqtt.reconnect_max_delay=2", "--set", "log.format=text")
    assert rec.wait_for(lambda: len(rec.on(TRAIN)) >= 12, 40)
    broker.stop()
    time.sleep(30)
    broker.start()
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert json.loads(out)["waiting_in_outbox"] == 0
    assert rec.wait_for(lambda: len({r["seq"] for r in rec.on(TRAIN)}) >= 60, 30), len(rec.on(TRAIN))
    seqs = [r["seq"] for r in rec.on(TRAIN)]
    unique = list(dict.fromkeys(seqs))  # QoS 1 is at-least-once: duplicates are allowed, gaps are not
    assert unique == list(range(60)), unique
    assert "connection lost" in err


def test_sigkill_mid_session_then_restart_delivers_what_was_accepted(broker, recorder, tmp_path):
    dead_port = free_port()  # no broker here: everything accepted stays in the outbox
    proc = start_cli("collect", "--simulate", "--label", "sad", "--duration", "300", "--set", f"mqtt.port={dead_port}",
                     "--set", "sim.speed=10", "--set", f"device.data_dir={tmp_path}")
    outbox_path = tmp_path / "outbox.sqlite"
    deadline = time.monotonic() + 60
    count = 0
    while time.monotonic() < deadline and count < 15:
        time.sleep(0.2)
        if outbox_path.exists():
            try:
                count = sqlite3.connect(outbox_path).execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    accepted = [json.loads(row[0]) for row in
                sqlite3.connect(outbox_path).execute("SELECT payload FROM outbox ORDER BY id").fetchall()]
    assert len(accepted) >= 15
    rec = recorder([TRAIN, ERRORS])
    daemon = start_cli("run", "--simulate", "--set", f"mqtt.port={broker.port}", "--set",
                       f"device.data_dir={tmp_path}", "--set", "button.enabled=false")
    try:
        assert rec.wait_for(lambda: len(rec.on(TRAIN)) >= len(accepted), 20)
        # the requester is told that the session was cut short, not resumed
        assert rec.wait_for(lambda: any(e["source"] == "collect" for e in rec.on(ERRORS)), 10), rec.on(ERRORS)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(5)
    assert [r["msg_id"] for r in rec.on(TRAIN)][:len(accepted)] == [m["msg_id"] for m in accepted]
    assert [m["seq"] for m in accepted] == list(range(len(accepted)))
    (cut_short,) = [e for e in rec.on(ERRORS) if e["source"] == "collect"]
    session_id = accepted[0]["session_id"]
    assert cut_short["payload_excerpt"] == session_id and "cut short by a restart" in cut_short["error"]
    stored = re.search(r"after (\d+) of 300 records", cut_short["error"])
    assert stored and int(stored.group(1)) >= len(accepted)  # the store holds every accepted record


def test_full_outbox_drops_oldest_training_records_first_and_counts(tmp_path, caplog):
    box = Outbox(tmp_path / "o.sqlite", max_messages=100)
    box.put("iotsensors/infer/result", b"result-0", 1, False, "result")
    for i in range(120):
        box.put("iotsensors/train", f"train-{i}".encode(), 1, False, "train")
    assert len(box) == 100 and box.dropped == 21
    kept = [p.payload for p in box.after(0, 1000)]
    assert kept[0] == b"result-0"  # the result survives
    assert kept[1] == b"train-21" and kept[-1] == b"train-119"  # the oldest training records went
    assert "dropped the 1 oldest" in caplog.text and "results are kept" in caplog.text
    box.close()
    reopened = Outbox(tmp_path / "o.sqlite", max_messages=100)
    assert len(reopened) == 100 and reopened.dropped == 21  # durable across restarts


def test_second_process_on_the_same_device_is_refused_clearly(broker, tmp_path):
    daemon = start_cli("run", "--simulate", "--set", f"mqtt.port={broker.port}", "--set", f"device.data_dir={tmp_path}")
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "emotion-edge.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        result = subprocess.run([sys.executable, "-m", "pi", "collect", "--simulate", "--label", "sad", "--duration",
                                 "2", "--set", f"mqtt.port={broker.port}", "--set", f"device.data_dir={tmp_path}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert f"(pid {daemon.pid})" in result.stderr and "MQTT commands" in result.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(5)


def test_daemon_resubscribes_after_the_broker_restarts(broker, recorder, tmp_path):
    """A broker without persistence forgets subscriptions; the daemon must subscribe again."""
    daemon = start_cli("run", "--simulate", "--set", f"mqtt.port={broker.port}", "--set", f"device.data_dir={tmp_path}",
                       "--set", "sim.speed=20", "--set", "mqtt.reconnect_max_delay=2")
    rec = recorder(["iotsensors/#"])
    status = "iotsensors/emotion-pi-01/status"
    try:
        assert rec.wait_for(lambda: sum(s["state"] == "online" for s in rec.on(status)) >= 1, 20)
        broker.stop()
        time.sleep(1)
        broker.start()
        assert rec.wait_for(lambda: sum(s["state"] == "online" for s in rec.on(status)) >= 2, 20)
        rec.publish("iotsensors/emotion-pi-01/command",
                    json.dumps({"command": "detect", "window_s": 2, "request_id": "after-restart"}).encode())
        assert rec.wait_for(lambda: any(r.get("request_id") == "after-restart"
                                        for r in rec.on("iotsensors/infer/result")), 20)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(5)


def test_oversized_message_is_rejected_before_it_is_stored(tmp_path):
    from pi.clock import Clock
    from pi.errors import PublishError
    from pi.messaging.publisher import make_publisher
    from pi.service.config import load

    cfg = load(None, [f"device.data_dir={tmp_path}"])
    box = Outbox(tmp_path / "o.sqlite")
    publisher = make_publisher(cfg["mqtt"], "dev", Clock(), box)
    with pytest.raises(PublishError, match="over the 131072-byte limit"):
        publisher.publish("iotsensors/infer", {"type": "window", "series": [0.1] * 40000})
    assert len(box) == 0
    publisher.publish("iotsensors/infer", {"type": "window", "series": [0.1] * 100})
    assert len(box) == 1
