"""sd_notify and the watchdog, through a real unix datagram socket standing in for systemd."""
import socket
import subprocess
import sys
import time

from conftest import ROOT


def test_daemon_notifies_ready_feeds_the_watchdog_and_says_stopping(broker, tmp_path):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "pi", "run", "--simulate", "--set", f"mqtt.port={broker.port}",
                             "--set", f"device.data_dir={tmp_path}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    messages = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and messages.count(b"WATCHDOG=1") < 4:
        try:
            messages.append(sock.recv(64))
        except socket.timeout:
            pass
    proc.terminate()
    proc.wait(5)
    while True:
        try:
            messages.append(sock.recv(64))
        except socket.timeout:
            break
    assert messages[0] == b"READY=1"
    assert messages.count(b"WATCHDOG=1") >= 4
    assert messages[-1] == b"STOPPING=1"
    assert proc.returncode == 0
