"""Which HTTP stack for the dashboard on a Pi 3: the standard library's ThreadingHTTPServer or aiohttp.
Each serves the same ~700-byte JSON and an event stream in its own process; measured: resident memory
(the bare interpreter's subtracted), GET latency alone and with 20 event streams open.

    python scripts/bench_http_stacks.py [--requests 500]     # aiohttp measured when it is importable

JSON on stdout. aiohttp is not a dependency of emotion-edge; install it in a throwaway venv to compare."""
from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

BODY = json.dumps({"k": "v" * 700})

SERVERS = {
    "bare": """
import time
print("READY", flush=True)
time.sleep(3600)
""",
    "stdlib": """
import json, sys, time, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = BODY_TEXT.encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path == "/events":
            self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.end_headers()
            while True:
                self.wfile.write(b"event: second\\ndata: " + BODY + b"\\n\\n"); self.wfile.flush(); time.sleep(1)
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY))); self.end_headers(); self.wfile.write(BODY)
s = ThreadingHTTPServer(("127.0.0.1", PORT), H); s.daemon_threads = True
print("READY", flush=True); s.serve_forever()
""",
    "aiohttp": """
import asyncio
from aiohttp import web
BODY = BODY_TEXT.encode()
async def status(request):
    return web.Response(body=BODY, content_type="application/json")
async def events(request):
    r = web.StreamResponse(headers={"Content-Type": "text/event-stream"}); await r.prepare(request)
    while True:
        await r.write(b"event: second\\ndata: " + BODY + b"\\n\\n"); await asyncio.sleep(1)
app = web.Application(); app.router.add_get("/status", status); app.router.add_get("/events", events)
print("READY", flush=True)
web.run_app(app, host="127.0.0.1", port=PORT, print=None)
""",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def latency(port: int, n: int) -> dict:
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            r.read()
        ms.append((time.perf_counter() - t0) * 1000)
    ms.sort()
    return {"p50": round(statistics.median(ms), 2), "p95": round(ms[int(0.95 * (len(ms) - 1))], 2)}


def measure(name: str, n: int) -> dict:
    port = free_port()
    code = textwrap.dedent(SERVERS[name]).replace("BODY_TEXT", repr(BODY)).replace("PORT", str(port))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "READY" not in line:
            return {"error": (proc.stderr.read() if proc.stderr else "")[-300:]}
        time.sleep(1.0)
        if name == "bare":
            return {"rss_kb": rss_kb(proc.pid)}
        idle = rss_kb(proc.pid)
        alone = latency(port, n)
        streams = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            streams.append(s)
        time.sleep(3)
        loaded = latency(port, n)
        busy = rss_kb(proc.pid)
        for s in streams:
            s.close()
        return {"rss_kb": idle, "rss_with_20_streams_kb": busy, "get_ms": alone, "get_ms_with_20_streams": loaded}
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    out: dict = {"python": sys.version.split()[0]}
    bare = measure("bare", 0)["rss_kb"]
    out["bare_interpreter_rss_kb"] = bare
    for name in ("stdlib", "aiohttp"):
        try:
            if name == "aiohttp":
                import aiohttp  # noqa: F401

                out["aiohttp_version"] = aiohttp.__version__
        except ImportError:
            out[name] = "not installed"
            continue
        m = measure(name, args.requests)
        if "rss_kb" in m:
            m["rss_over_bare_kb"] = m["rss_kb"] - bare
            m["rss_with_20_streams_over_bare_kb"] = m["rss_with_20_streams_kb"] - bare
        out[name] = m
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
