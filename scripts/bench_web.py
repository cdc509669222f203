"""Dashboard figures, as JSON: daemon RSS with the web off and on (idle, and with 20 live viewers), the
page's total transfer size, latency from a second's record to the event reaching a viewer (20 Python
event-stream clients, and headless Chromium's own EventSource when chromium is installed), and the
sampler's late ticks over 60 s without viewers and with 20.

    .venv/bin/python scripts/bench_web.py [--seconds 60] [--clients 20] [--out bench_web.json]

Everything runs on 127.0.0.1: a Mosquitto it starts, `emotion-edge run --simulate` at real speed."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1))


def get(url: str) -> tuple[bytes, dict]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read(), dict(r.headers)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def start_daemon(broker_port: int, data: Path, web: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "pi", "run", "--simulate", "--set", f"mqtt.port={broker_port}", "--set",
            f"device.data_dir={data}", "--set", f"web.enabled={'true' if web else 'false'}", "--set",
            f"web.port={port}", "--set", "log.format=text", "--set", "web.max_clients=64"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if not web:
                time.sleep(8)  # the same warm-up as the web-on runs get
                return proc, url
            get(url + "/api/status")
            return proc, url
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("daemon did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


class SseClient(threading.Thread):
    """Reads /api/events over a raw socket; records (receive time - `emitted`, when the sampler handed the
    record over) per `second` event."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.latencies, self.stop_flag = port, [], threading.Event()

    def run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
        sock.settimeout(0.5)
        buf = b""
        while not self.stop_flag.is_set():
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            now = time.time()
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                if block.startswith(b"event: second"):
                    data = json.loads(block.split(b"data: ", 1)[1])
                    self.latencies.append(now - data["emitted"])
        sock.close()


def late_ticks(url: str, seconds: int) -> tuple[int, int]:
    """Late ticks and samples summed over the last `seconds` records."""
    records = json.loads(get(url + "/api/seconds")[0])[-seconds:]
    return sum(r["late_ticks"] for r in records), sum(r["samples"] for r in records)


def browser_latency(url: str, seconds: float) -> list[float] | None:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(url + "/")
        time.sleep(seconds)
        return driver.execute_script("return window.ee.latency.slice(2)")  # the first come from the backlog
    finally:
        driver.quit()


def page_bytes(url: str) -> dict:
    """What opening the page transfers: the HTML, every file it references, and its first API calls."""
    html, headers = get(url + "/")
    parts = {"/": len(html)}
    for ref in re.findall(rb'(?:src|href)="(/static/[^"]+)"', html):
        parts[ref.decode()] = len(get(url + ref.decode())[0])
    for api in ("/api/status", "/api/seconds", "/api/results?limit=50"):
        parts[api] = len(get(url + api)[0])
    return {"total_bytes": sum(parts.values()), "parts": parts}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    broker_port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    + ("user root\n" if os.geteuid() == 0 else ""))
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict = {"machine": f"{os.cpu_count()} CPU(s), {os.uname().machine}, not a Pi", "seconds": args.seconds,
                 "clients": args.clients}
    try:
        time.sleep(0.5)
        proc, _ = start_daemon(broker_port, work / "off", web=False)
        time.sleep(args.seconds / 3)
        out["rss_web_off_kb"] = rss_kb(proc.pid)
        stop(proc)

        proc, url = start_daemon(broker_port, work / "on", web=True)
        time.sleep(args.seconds / 3)
        out["rss_web_on_idle_kb"] = rss_kb(proc.pid)
        out["page"] = page_bytes(url)
        status_ms = []
        for _ in range(50):
            t0 = time.perf_counter()
            get(url + "/api/status")
            status_ms.append((time.perf_counter() - t0) * 1000)
        out["api_status_ms"] = {"p50": round(statistics.median(status_ms), 2),
                                "p95": round(percentile(status_ms, 0.95), 2)}
        time.sleep(max(0, args.seconds - args.seconds / 3))
        ticks, samples = late_ticks(url, args.seconds)
        out["no_viewers"] = {"late_ticks": ticks, "samples": samples}

        clients = [SseClient(int(url.rsplit(":", 1)[1])) for _ in range(args.clients)]
        for c in clients:
            c.start()
        time.sleep(args.seconds)
        ticks, samples = late_ticks(url, args.seconds)
        out["rss_web_on_with_viewers_kb"] = rss_kb(proc.pid)
        for c in clients:
            c.stop_flag.set()
        for c in clients:
            c.join(2)
        lat = [x * 1000 for c in clients for x in c.latencies[2:]]
        out["with_viewers"] = {"late_ticks": ticks, "samples": samples,
                               "events_received": sum(len(c.latencies) for c in clients),
                               "latency_ms": {"p50": round(statistics.median(lat), 1),
                                              "p95": round(percentile(lat, 0.95), 1),
                                              "max": round(max(lat), 1)}}
        time.sleep(args.seconds)  # no viewers again: how much the late ticks vary by themselves here
        ticks, samples = late_ticks(url, args.seconds)
        out["no_viewers_after"] = {"late_ticks": ticks, "samples": samples}
        blat = browser_latency(url, min(40, args.seconds))
        if blat:
            blat = [x * 1000 for x in blat]
            out["browser_latency_ms"] = {"events": len(blat), "p50": round(statistics.median(blat), 1),
                                         "p95": round(percentile(blat, 0.95), 1)}
        stop(proc)
        out["rss_delta_idle_kb"] = out["rss_web_on_idle_kb"] - out["rss_web_off_kb"]
        out["rss_delta_with_viewers_kb"] = out["rss_web_on_with_viewers_kb"] - out["rss_web_off_kb"]
    finally:
        broker.terminate()
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
