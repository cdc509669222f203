"""The outbox publisher's bookkeeping against the in-memory FakeTransport: early and reused message ids,
reconnects, a full disk, the last will's stamp, private files and the watchdog. Fast: no broker."""
import json
import os
import socket
import sqlite3
import stat
import threading
import time

import pytest

from pi.clock import ManualClock
from pi.errors import PublishError
from pi.messaging.fake import FakeTransport
from pi.messaging.outbox import Outbox, OutboxError
from pi.messaging.publisher import OutboxPublisher
from pi.service.config import load

TOPIC = "iotsensors/train"


def make(tmp_path, transport=None, outbox=None, clock=None, inflight=20):
    cfg = load(None, [f"device.data_dir={tmp_path}"])
    transport = transport or FakeTransport()
    box = outbox if outbox is not None else Outbox(tmp_path / "outbox.sqlite")
    pub = OutboxPublisher(cfg["mqtt"], "dev", clock or ManualClock(), box, transport, inflight)
    return pub, transport, box


def send(pub, n, start=0):
    for i in range(start, start + n):
        pub.publish(TOPIC, {"type": "train", "msg_id": f"dev/s/{i}", "seq": i})


def pump(pub):
    """What the sender thread does on a wake, run in the test's thread."""
    pub._delete_done()
    if pub.connected.is_set():
        pub._send_batch()
    pub._delete_done()


def seqs(transport):
    return [json.loads(h.payload)["seq"] for h in transport.handed]


def test_messages_are_sent_in_order_and_deleted_on_their_puback(tmp_path):
    pub, t, box = make(tmp_path)
    send(pub, 5)
    pump(pub)
    assert t.handed == []  # not connected: everything waits on disk
    t.accept()
    pump(pub)
    assert seqs(t) == [0, 1, 2, 3, 4] and pub.pending == 5
    for h in reversed(t.handed):  # acknowledgements may come in any order
        t.ack(h.mid)
    assert pub.pending == 0 and len(box) == 5  # acknowledged in memory; rows deleted by the sender
    pump(pub)
    assert len(box) == 0


def test_a_puback_that_overtakes_the_bookkeeping_still_counts(tmp_path):
    t = FakeTransport()
    t.ack_inside_publish = True  # the PUBACK arrives before publish() has returned its id
    pub, t, box = make(tmp_path, t)
    t.accept()
    send(pub, 3)
    pump(pub)
    assert len(box) == 0 and pub._inflight == {} and pub._acked_early == set()


def test_reused_message_ids_ack_the_right_rows(tmp_path):
    pub, t, box = make(tmp_path, FakeTransport(first_mid=65533), inflight=2)
    t.accept()  # the online status takes 65533
    send(pub, 4)
    pump(pub)
    assert [h.mid for h in t.handed] == [65534, 65535]
    t.ack(65535)
    pump(pub)
    assert [h.mid for h in t.handed] == [65534, 65535, 1]  # wrapped
    t.ack(1)
    t.ack(65534)
    pump(pub)
    assert [h.mid for h in t.handed][-1] == 2 and pub.pending == 1
    assert [json.loads(p.payload)["seq"] for p in box.after(0, 10)] == [3]


def test_a_status_puback_never_acks_a_data_message(tmp_path):
    pub, t, box = make(tmp_path)
    t.accept()
    t.ack(t.status_mids[-1])  # the online status's PUBACK: no data message has that id
    send(pub, 1)
    pump(pub)
    assert len(box) == 1 and pub.pending == 1  # still waiting for its own PUBACK
    assert pub._acked_early == set()  # forgotten, so a wrapped-around id cannot match it later
    t.ack(t.handed[-1].mid)
    pump(pub)
    assert len(box) == 0


def test_after_a_reconnect_what_was_in_flight_is_acknowledged_and_the_rest_follows(tmp_path):
    pub, t, box = make(tmp_path, inflight=3)
    t.accept()
    send(pub, 5)
    pump(pub)
    t.drop()
    assert not pub.connected.is_set() and not pub.ready.is_set()
    send(pub, 1, start=5)
    pump(pub)
    assert seqs(t) == [0, 1, 2]  # nothing handed while offline
    t.accept()
    assert len(t.subscriptions) == 2  # subscriptions renewed on every connection
    for h in t.handed:  # paho resends in-flight QoS 1 messages itself, with their ids
        t.ack(h.mid)
    pump(pub)
    assert seqs(t) == [0, 1, 2, 3, 4, 5] and len(box) == 3


class DeletesFailOutbox(Outbox):
    """A disk that fills up between a message's insert and its delete. SQLite's max_page_count cannot
    make a DELETE fail (deletes free pages), so the error is raised here, with SQLite's own message."""

    full = True

    def delete_many(self, row_ids):
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        super().delete_many(row_ids)


def test_a_full_disk_at_the_acknowledgement_costs_nothing_but_a_retry(tmp_path):
    box = DeletesFailOutbox(tmp_path / "outbox.sqlite")
    pub, t, box = make(tmp_path, outbox=box)
    t.accept()
    send(pub, 3)
    pump(pub)
    for h in t.handed:
        t.ack(h.mid)  # before: the delete ran here, in the network thread, and its exception killed it
    assert t.alive() and pub.pending == 0
    pump(pub)  # the sender's batched delete fails: the rows stay, marked done, and are not sent again
    assert len(box) == 3 and pub.pending == 0 and seqs(t) == [0, 1, 2]
    assert "disk is full" in pub.storage_error
    assert "disk is full" in json.loads(t.statuses[-1])["storage_error"]  # the status says so at once
    box.full = False
    pump(pub)
    assert len(box) == 0


def cap(db: sqlite3.Connection) -> None:
    """A disk with no room left: the database may not grow past its current pages (real SQLITE_FULL)."""
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")


def uncap(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA max_page_count = 1073741823")


def test_a_full_disk_refuses_the_message_says_so_and_recovers(tmp_path):
    pub, t, box = make(tmp_path)
    t.accept()
    cap(box._db)
    with pytest.raises(OutboxError, match="database or disk is full") as raised:
        for i in range(1000):  # the free space left in the last pages fills first, as on a real disk
            send(pub, 1, start=i)
    assert isinstance(raised.value, PublishError) and raised.value.disk_full
    stored = len(box)
    assert [json.loads(p.payload)["seq"] for p in box.after(0, 1000)] == list(range(stored))  # no half row
    assert "disk is full" in json.loads(t.statuses[-1])["storage_error"]
    assert pub.publish_direct("iotsensors/dev/error", {"type": "error", "error": "disk full"})
    uncap(box._db)
    send(pub, 1, start=stored)
    assert pub.storage_error is None and json.loads(t.statuses[-1])["storage_error"] is None
    assert len(box) == stored + 1


def test_the_will_is_never_older_than_the_last_status(tmp_path):
    clock = ManualClock()
    pub, t, box = make(tmp_path, clock=clock)
    clock.t += 100  # the process started long before it could connect
    t.accept()
    will, online = json.loads(t.wills[-1]), json.loads(t.statuses[-1])
    assert will["state"] == "offline" and online["state"] == "online"
    assert will["timestamp"] >= online["timestamp"]  # before: the will carried the process start time
    clock.t += 50
    t.drop()
    clock.t += 50
    t.accept()
    assert json.loads(t.wills[-1])["timestamp"] >= json.loads(t.statuses[-1])["timestamp"]
    assert json.loads(t.wills[-1])["timestamp"] > will["timestamp"]  # re-stamped for each connection


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_data_directory_and_databases_are_private(tmp_path):
    from pi.service.store import LocalStore

    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    box = Outbox(data / "outbox.sqlite")
    box.put(TOPIC, b"x", 1, False, "train")
    store = LocalStore(data / "records.sqlite")
    store.add_feedback("r", "u", "sad", 0.0)
    assert mode(data) == 0o700
    files = [p for p in data.iterdir() if ".sqlite" in p.name]
    assert {p.name for p in files} >= {"outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm",
                                       "records.sqlite", "records.sqlite-wal"}
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    box.close()
    store.close()
    os.chmod(data / "outbox.sqlite", 0o644)  # left by an older version
    Outbox(data / "outbox.sqlite").close()
    assert mode(data / "outbox.sqlite") == 0o600


def test_paho_transport_reports_a_dead_network_loop(tmp_path):
    from pi.loopback import free_port
    from pi.messaging.transport import MqttTransport

    cfg = load(None, [f"device.data_dir={tmp_path}", f"mqtt.port={free_port()}"])  # nobody listens
    pub, t, box = make(tmp_path, transport=MqttTransport(cfg["mqtt"], "dev"))
    t.connect()
    assert t.alive()
    t.client.loop_stop()  # the network thread ends without a disconnect, as an uncaught exception would
    assert not t.alive() and not pub.alive()
    t.disconnect()


@pytest.mark.slow
def test_the_watchdog_is_not_fed_once_the_mqtt_loop_is_dead(tmp_path, monkeypatch):
    from pi.service.daemon import Daemon
    from pi.service.device import create

    sock_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = load(None, [f"device.data_dir={tmp_path}", "button.enabled=false", "sim.speed=20"])
    device = create(cfg, simulate=True)
    transport = FakeTransport(auto_accept=True)
    device.publisher = OutboxPublisher(cfg["mqtt"], "dev", device.clock, device.publisher.outbox, transport)
    daemon = Daemon(device)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()

    def pings(seconds):
        n, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                n += sock.recv(64) == b"WATCHDOG=1"
            except TimeoutError:
                pass
        return n

    try:
        assert pings(0.6) >= 3
        transport.dead = True
        pings(0.2)  # one already in the air
        assert pings(0.6) == 0 and daemon.mqtt_dead
    finally:
        daemon.stop_event.set()
        runner.join(5)
        sock.close()
