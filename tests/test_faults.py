"""Faults done for real: a broker that goes away mid-session, a daemon killed with SIGKILL, a full outbox,
a full disk, a broker that refuses the connection, the last will's stamp."""
import json
import logging
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from conftest import ROOT, Broker, free_port

from pi.messaging.outbox import Outbox

TRAIN = "iotsensors/train"
ERRORS = "iotsensors/emotion-pi-01/error"


def start_cli(*args, capture: bool = False):
    """The CLI in a subprocess. Its output goes to pipes only when the test reads them (`capture`, then
    communicate()): an unread pipe fills up and blocks the process's logging, which stalls it mid-session."""
    if capture:
        return subprocess.Popen([sys.executable, "-m", "pi", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    with tempfile.TemporaryFile() as sink:  # the child keeps its own descriptor of the file
        return subprocess.Popen([sys.executable, "-m", "pi", *args], cwd=ROOT, stdout=sink, stderr=sink)


@pytest.mark.persistent_broker
@pytest.mark.e2e
@pytest.mark.slow
def test_broker_down_30s_in_a_60s_session_loses_nothing(broker, recorder, tmp_path):
    rec = recorder([TRAIN], persistent_session=True)
    proc = start_cli("collect", "--simulate", "--label", "angry", "--duration", "60", "--set",
                     f"mqtt.port={broker.port}", "--set", f"device.data_dir={tmp_path}", "--set",
                     "mqtt.reconnect_max_delay=2", "--set", "log.format=text", capture=True)
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


@pytest.mark.e2e
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
    assert proc.poll() is None, f"the collect ended early (exit code {proc.returncode})"
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    accepted = [json.loads(row[0]) for row in
                sqlite3.connect(outbox_path).execute("SELECT payload FROM outbox ORDER BY id").fetchall()]
    # 15 in about 8 s here. Before, this poll's closing connection could delete the outbox's WAL under the
    # collect (see test_what_the_outbox_accepted_survives_a_kill_after_another_process_read_it): its count
    # froze at 0-7 while the collect went on accepting, and the kill lost everything after the freeze
    assert len(accepted) >= 15, (len(accepted), count)
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


OUTBOX_WRITER = """
import os, signal, sys
from pi.messaging.outbox import Outbox
box = Outbox(sys.argv[1])
box.put("iotsensors/train", b"before", 1, False, "train")
print("stored", flush=True)
sys.stdin.readline()
box.put("iotsensors/train", b"after", 1, False, "train")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_the_outbox_accepted_survives_a_kill_after_another_process_read_it(tmp_path):
    """Another process that opens the outbox and closes it again (this test, an operator's sqlite3) must not
    take the WAL from under the device. Before, opening the outbox's second connection dropped the device
    process's lock on the file (pi.sqlite), so the reader's close thought it was the last, checkpointed and
    deleted the -wal: the device's later commits went to a deleted file, and the kill took them."""
    path = tmp_path / "outbox.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", OUTBOX_WRITER, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "stored\n"
        reader = sqlite3.connect(path)
        assert reader.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
        reader.close()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.wait(10) == -signal.SIGKILL
    finally:
        if writer.poll() is None:
            writer.kill()
    reader = sqlite3.connect(path)
    assert [bytes(r[0]) for r in reader.execute("SELECT payload FROM outbox ORDER BY id")] == [b"before", b"after"]
    reader.close()


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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


def _fill_detections(db: sqlite3.Connection) -> None:
    """The store's disk is full: no page to grow into (max_page_count) and the last pages' room used up,
    so the next detection gets SQLite's real "database or disk is full"."""
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    for i in range(100_000):
        try:
            db.execute("INSERT INTO detections VALUES (?,?,?,?,?)", (f"ballast-{i}", "u", "t", "w", "r"))
        except sqlite3.OperationalError as exc:
            assert "full" in str(exc)
            return


@pytest.mark.e2e
def test_a_full_disk_costs_the_job_not_the_service(broker, recorder, tmp_path):
    from pi.service import config
    from pi.service.daemon import Daemon
    from pi.service.device import create

    cfg = config.load(None, [f"mqtt.port={broker.port}", "sim.speed=20", f"device.data_dir={tmp_path}",
                             "detect.window_s=2", "button.enabled=false", "camera.frames_per_window=0"])
    errors, status = "iotsensors/emotion-pi-01/error", "iotsensors/emotion-pi-01/status"
    command = "iotsensors/emotion-pi-01/command"
    rec = recorder([errors, status, "iotsensors/infer/result"])
    daemon = Daemon(create(cfg, simulate=True))
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        assert daemon.device.publisher.ready.wait(10)
        _fill_detections(daemon.device.store._db)
        rec.publish(command, json.dumps({"command": "detect", "request_id": "on-full-disk"}).encode())
        assert rec.wait_for(lambda: any("disk is full" in e["error"] for e in rec.on(errors)), 20), rec.messages
        assert rec.wait_for(lambda: "disk is full" in (rec.on(status)[-1].get("storage_error") or ""), 5), \
            rec.on(status)
        assert rec.on(status)[-1]["state"] == "online"
        # still answering: a malformed command is rejected with a reason, over the same connection
        rec.publish(command, b'{"command": "detect", "window_s": 1' + b"0" * 500 + b"}")
        assert rec.wait_for(lambda: any("501 digits" in e["error"] for e in rec.on(errors)), 10)
        assert runner.is_alive() and daemon.device.publisher.alive()
        daemon.device.store._db.execute("PRAGMA max_page_count = 1073741823")  # room again
        rec.publish(command, json.dumps({"command": "detect", "request_id": "after-full-disk"}).encode())
        assert rec.wait_for(lambda: any(r["request_id"] == "after-full-disk"
                                        for r in rec.on("iotsensors/infer/result")), 20)
        assert rec.wait_for(lambda: rec.on(status)[-1].get("storage_error") is None, 5)
    finally:
        daemon.stop_event.set()
        runner.join(5)


@pytest.mark.e2e
@pytest.mark.slow
def test_a_refused_connection_backs_off_to_the_maximum(tmp_path, caplog):
    """A broker that refuses every connection (here: no anonymous clients). Before, the back-off was reset
    on every disconnect and the device retried about once a second for ever."""
    from pi.clock import Clock
    from pi.messaging.publisher import make_publisher
    from pi.service.config import load

    b = Broker(tmp_path)
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    b.start()
    try:
        cfg = load(None, [f"device.data_dir={tmp_path}", f"mqtt.port={b.port}", "mqtt.reconnect_max_delay=4",
                          "mqtt.username=emotion", "mqtt.password=wrong"])
        publisher = make_publisher(cfg["mqtt"], "dev", Clock(), Outbox(tmp_path / "o.sqlite"))
        with caplog.at_level(logging.ERROR):
            publisher.start(wait_s=0)
            time.sleep(14)
            publisher.stop(0)
        attempts = [r.created for r in caplog.records if "refused the connection" in r.getMessage()]
        assert "refused the connection" in caplog.text and "wrong" not in caplog.text  # no password in logs
        gaps = [round(b - a, 1) for a, b in zip(attempts, attempts[1:])]
        # 1 s (jittered 0.5-1.5 s once the broker has answered), 2, 4, 4: five or six attempts, not fourteen
        assert len(attempts) <= 6, gaps
        assert max(gaps) >= 3.5, gaps
    finally:
        b.stop()


@pytest.mark.e2e
def test_the_last_will_is_never_older_than_the_last_online(broker, recorder, tmp_path):
    """Before, the will carried the process start time: after a reconnect the device's last "online" was
    newer than the "connection lost" that followed it, so a dead device looked alive."""
    status = "iotsensors/emotion-pi-01/status"
    rec = recorder([status])
    daemon = start_cli("run", "--simulate", "--set", f"mqtt.port={broker.port}", "--set", f"device.data_dir={tmp_path}",
                       "--set", "button.enabled=false", "--set", "mqtt.reconnect_max_delay=2")
    try:
        assert rec.wait_for(lambda: any(s["state"] == "online" for s in rec.on(status)), 20)
        time.sleep(1.5)
        broker.stop()
        time.sleep(0.5)
        broker.start()  # a reconnect: a newer "online"
        assert rec.wait_for(lambda: sum(s["state"] == "online" for s in rec.on(status)) >= 2, 20)
        time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGKILL)  # no clean "offline": the broker publishes the will
        daemon.wait(5)
    assert rec.wait_for(lambda: rec.on(status)[-1].get("reason") == "connection lost", 10), rec.on(status)
    will = rec.on(status)[-1]
    last_online = [s for s in rec.on(status) if s["state"] == "online"][-1]
    assert will["state"] == "offline" and will["timestamp"] >= last_online["timestamp"], (will, last_online)
