#!/usr/bin/env python3
"""Load benchmark of the delivery path: N simulated devices publish training records through the real
outbox + MqttPublisher to a Mosquitto on 127.0.0.1, which is restarted once in the middle. Prints JSON:
sent, received, lost (must be 0), duplicates, end-to-end latency p50/p99 (publish() call to arrival).

    python scripts/bench_mqtt.py [--devices 20] [--seconds 60] [--burst-every 10] [--burst-size 20]
Each device sends 1 record/s, plus a burst of --burst-size records every --burst-every seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pi.clock import Clock  # noqa: E402
from pi.loopback import free_port  # noqa: E402
from pi.messaging.outbox import Outbox  # noqa: E402
from pi.messaging.publisher import make_publisher  # noqa: E402
from pi.service.config import load  # noqa: E402


def start_broker(conf: Path) -> subprocess.Popen:
    with open(conf.with_suffix(".log"), "ab") as log:  # kept: "Error saving in-memory database" shows here
        proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                                stdout=log, stderr=subprocess.STDOUT)
    port = int(conf.read_text().split()[1])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--burst-every", type=float, default=10)
    p.add_argument("--burst-size", type=int, default=20)
    p.add_argument("--restart-at", type=float, default=None, help="broker restart time (default: half way)")
    p.add_argument("--drain-timeout", type=float, default=60)
    args = p.parse_args(argv)
    restart_at = args.seconds / 2 if args.restart_at is None else args.restart_at
    tmp = Path(tempfile.mkdtemp(prefix="bench_mqtt_"))
    port = free_port()
    conf = tmp / "mosquitto.conf"
    # persistence keeps the subscriber's session and its queued messages across the restart. Started as
    # root, Mosquitto drops to its own user, which cannot write its persistence file into our 0700 temporary
    # directory: the queue then dies with the restart and "lost" would count the harness's loss, not the
    # device's. So stay root, as the tests' broker fixture does.
    run_as = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {tmp}/\nmax_queued_messages 0\n{run_as}")
    broker = start_broker(conf)

    arrivals: dict[str, list[float]] = {}
    sent_at: dict[str, float] = {}
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        now = time.time()
        key = json.loads(msg.payload)["msg_id"]
        with lock:
            arrivals.setdefault(key, []).append(now)

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-subscriber", clean_session=False)
    sub.reconnect_delay_set(0.1, 0.5)
    sub.on_connect = lambda c, *a: c.subscribe("bench/#", qos=1)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    time.sleep(0.5)

    publishers = []
    for d in range(args.devices):
        cfg = load(None, [f"mqtt.port={port}", f"device.id=bench-{d:02d}", "mqtt.reconnect_max_delay=2"])
        pub = make_publisher(cfg["mqtt"], cfg["device"]["id"], Clock(), Outbox(tmp / f"outbox-{d}.sqlite"))
        pub.start(wait_s=5)
        publishers.append(pub)

    def device_loop(d: int, pub) -> None:
        seq = 0
        start = time.monotonic()
        next_burst = args.burst_every
        while (elapsed := time.monotonic() - start) < args.seconds:
            count = 1
            if elapsed >= next_burst:
                count += args.burst_size
                next_burst += args.burst_every
            for _ in range(count):
                msg_id = f"bench-{d:02d}/s/{seq}"
                with lock:
                    sent_at[msg_id] = time.time()
                pub.publish(f"bench/{d}", {"type": "train", "msg_id": msg_id, "seq": seq, "pad": "x" * 200})
                seq += 1
            time.sleep(max(0.0, start + int(elapsed) + 1 - time.monotonic()))

    threads = [threading.Thread(target=device_loop, args=(d, pub)) for d, pub in enumerate(publishers)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(max(0.0, restart_at - (time.monotonic() - t0)))
    broker.terminate()
    broker.wait(10)
    down_s = 2.0
    time.sleep(down_s)
    broker = start_broker(conf)
    for t in threads:
        t.join()
    deadline = time.monotonic() + args.drain_timeout
    while time.monotonic() < deadline and (sum(p.pending for p in publishers) or len(arrivals) < len(sent_at)):
        time.sleep(0.2)
    time.sleep(1.0)
    for pub in publishers:
        pub.stop(1.0)
    sub.loop_stop()
    sub.disconnect()
    broker.terminate()
    broker.wait(10)
    with lock:
        latencies = [(times[0] - sent_at[k]) * 1000 for k, times in arrivals.items() if k in sent_at]
        duplicates = sum(len(v) - 1 for v in arrivals.values())
        lost = sorted(set(sent_at) - set(arrivals))
    print(json.dumps({
        "devices": args.devices, "seconds": args.seconds, "burst": [args.burst_every, args.burst_size],
        "broker_restart_at_s": restart_at, "broker_down_s": down_s,
        "sent": len(sent_at), "received": len(arrivals), "lost": len(lost), "lost_examples": lost[:5],
        "duplicates": duplicates,
        "latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 1),
                       "p99": round(float(np.percentile(latencies, 99)), 1),
                       "max": round(float(np.max(latencies)), 1)} if latencies else None,
    }, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not lost else 1


if __name__ == "__main__":
    sys.exit(main())
