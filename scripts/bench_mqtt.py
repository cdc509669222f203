#!/usr/bin/env python3
"""Load benchmark of the delivery path: N simulated devices publish training records through the real
outbox + publisher to a Mosquitto on 127.0.0.1, which is restarted once in the middle. Prints JSON:
sent, received, lost (must be 0), duplicates, end-to-end latency p50/p99 (publish() call to arrival).

    python scripts/bench_mqtt.py [--devices 20] [--seconds 60] [--burst-every 10] [--burst-size 20]
                                 [--baseline GIT_REV] [--rounds 1] [--broker-nodelay]
Each device sends 1 record/s, plus a burst of --burst-size records every --burst-every seconds.

--baseline measures another revision's pi/ side by side with the working tree, in one run: each round runs
the baseline, then the working tree, each in its own process against its own fresh broker, with the same
load and this same harness. --broker-nodelay sets Mosquitto's set_tcp_nodelay (Nagle off at the broker).
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
    p.add_argument("--broker-nodelay", action="store_true", help="Mosquitto set_tcp_nodelay true")
    p.add_argument("--baseline", help="a git revision to measure side by side with the working tree")
    p.add_argument("--rounds", type=int, default=1, help="with --baseline: alternate this many times")
    p.add_argument("--code", help=argparse.SUPPRESS)  # worker: the tree whose pi/ to measure
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)  # worker: the broker's port
    args, _ = p.parse_known_args(argv)
    if args.code is None:
        return orchestrate(args, sys.argv[1:] if argv is None else list(argv))
    return run_load(args)


def orchestrate(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the load in a child process per variant, so each imports its own pi/; print all results."""
    sys.path.insert(0, str(ROOT))
    from pi.loopback import free_port

    passthrough, skip = [], False
    for a in argv:  # everything but --baseline/--rounds and their values goes to the workers
        if skip or a in ("--baseline", "--rounds") or a.startswith(("--baseline=", "--rounds=")):
            skip = not skip and a in ("--baseline", "--rounds")
            continue
        passthrough.append(a)
    variants = [("working tree", ROOT)]
    with tempfile.TemporaryDirectory(prefix="bench_mqtt_code_") as tmp:
        if args.baseline:
            rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], check=True,
                                 capture_output=True, text=True).stdout.strip()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "pi", "drivers"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            variants.insert(0, (f"baseline {rev}", Path(tmp)))
        results: dict[str, list[dict]] = {name: [] for name, _ in variants}
        for _ in range(args.rounds if args.baseline else 1):
            for name, code in variants:
                out = subprocess.run([sys.executable, __file__, *passthrough, "--code", str(code),
                                      "--port", str(free_port())], capture_output=True, text=True)
                if out.returncode not in (0, 1):
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 2
                results[name].append(json.loads(out.stdout))
    if not args.baseline:
        print(json.dumps(results["working tree"][0], indent=2))
        return 0 if not results["working tree"][0]["lost"] else 1
    print(json.dumps({"side_by_side": {name: [{k: r[k] for k in ("sent", "received", "lost", "duplicates",
                                                                  "latency_ms")} for r in runs]
                                       for name, runs in results.items()},
                      "load": {k: results["working tree"][0][k] for k in ("devices", "seconds", "burst",
                                                                          "broker_restart_at_s", "broker_down_s",
                                                                          "broker_nodelay")}}, indent=2))
    return 0 if not any(r["lost"] for runs in results.values() for r in runs) else 1


def run_load(args: argparse.Namespace) -> int:
    sys.path.insert(0, args.code)
    from pi.clock import Clock
    from pi.messaging.outbox import Outbox
    from pi.messaging.publisher import make_publisher
    from pi.service.config import load

    restart_at = args.seconds / 2 if args.restart_at is None else args.restart_at
    tmp = Path(tempfile.mkdtemp(prefix="bench_mqtt_"))
    port = args.port
    conf = tmp / "mosquitto.conf"
    # persistence keeps the subscriber's session and its queued messages across the restart. Started as
    # root, Mosquitto drops to its own user, which cannot write its persistence file into our 0700 temporary
    # directory: the queue then dies with the restart and "lost" would count the harness's loss, not the
    # device's. So stay root, as the tests' broker fixture does.
    run_as = "user root\n" if os.geteuid() == 0 else ""
    nodelay = "set_tcp_nodelay true\n" if args.broker_nodelay else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {tmp}/\nmax_queued_messages 0\n{run_as}{nodelay}")
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
    log_text = (tmp / "mosquitto.log").read_text(errors="replace")
    broker_errors = [line for line in log_text.splitlines() if "Error" in line][:5]
    print(json.dumps({
        "devices": args.devices, "seconds": args.seconds, "burst": [args.burst_every, args.burst_size],
        "broker_restart_at_s": restart_at, "broker_down_s": down_s, "broker_nodelay": args.broker_nodelay,
        "broker_errors": broker_errors,
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
