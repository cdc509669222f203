"""End to end against a real Mosquitto on 127.0.0.1, simulated hardware, the real CLI and daemon."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, run_cli


def sim_args(broker, tmp_path, *extra):
    return ["--simulate", "--set", f"mqtt.port={broker.port}", "--set", "sim.speed=20",
            "--set", f"device.data_dir={tmp_path}", "--set", "log.format=text", *extra]


def test_collect_puts_ordered_labelled_records_on_train(broker, recorder, tmp_path):
    rec = recorder(["iotsensors/train"])
    result = run_cli("collect", "--label", "happy", "--duration", "5", *sim_args(broker, tmp_path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["records"] == 5 and summary["waiting_in_outbox"] == 0
    assert rec.wait_for(lambda: len(rec.on("iotsensors/train")) >= 5)
    records = rec.on("iotsensors/train")
    assert [r["seq"] for r in records] == list(range(5))
    for r in records:
        assert r["schema"] == 1 and r["mood"] == "happy" and r["session_id"] == summary["session_id"]
        assert r["timestamp"].endswith("Z") and r["device_id"] == "emotion-pi-01"
        assert 0.5 < r["skin_conductance"] < 40
        assert 40 < r["bpm"] < 140 and r["quality"] in ("ok", "poor")
        assert r["msg_id"] == f"emotion-pi-01/{r['session_id']}/{r['seq']}"
    # and the local store holds the same records
    import sqlite3
    rows = sqlite3.connect(tmp_path / "records.sqlite").execute("SELECT seq, label FROM records").fetchall()
    assert sorted(rows) == [(i, "happy") for i in range(5)]


def test_detect_publishes_window_and_result_with_one_request_id(broker, recorder, tmp_path):
    rec = recorder(["iotsensors/infer", "iotsensors/infer/result"])
    result = run_cli("detect", "--window", "3", *sim_args(broker, tmp_path, "--set", "sim.emotion=angry",
                                                          "--set", "sim.bpm=96"))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert rec.wait_for(lambda: rec.on("iotsensors/infer") and rec.on("iotsensors/infer/result"))
    window, published = rec.on("iotsensors/infer")[0], rec.on("iotsensors/infer/result")[0]
    assert window["request_id"] == published["request_id"] == printed["request_id"]
    assert window["window_s"] == 3 and len(window["bpm_series"]) == 3
    assert window["bpm_mean"] == pytest.approx(96, abs=3)
    assert 1 < window["skin_conductance_mean"] < 40
    assert published["bpm_mean"] == window["bpm_mean"]
    assert published["arousal"] == "high"
    # no personal model yet: the face decides, as the decision rule says (the shipped face sample is seen)
    assert published["faces_found"] >= 1 and published["basis"] == "face" and published["face_available"]
    fused = {e: published[f"p_{e}"] for e in ("happy", "sad", "angry", "neutral")}
    assert sum(fused.values()) == pytest.approx(1, abs=1e-3)
    assert published["confidence"] == pytest.approx(max(fused.values()), abs=1e-4)
    expected = max(fused, key=fused.get) if published["confidence"] >= 0.4 else "uncertain"
    assert published["emotion"] == expected



def test_the_windows_bpm_series_passes_the_same_quality_gate_as_its_bpm_mean():
    from pi.messaging import messages
    from pi.physiology.sampler import HR_QUALITY_MIN, SecondRecord
    from pi.service.device import summarise

    seconds = [SecondRecord(t=float(k), wall=1_790_000_000.0 + k, skin_conductance=4.0, bpm=bpm, contact=1.0,
                            hr_quality=quality, samples=50, i2c_errors=0, late_ticks=0)
               for k, (bpm, quality) in enumerate([(70.0, 1.0), (130.0, HR_QUALITY_MIN - 0.1), (72.0, HR_QUALITY_MIN),
                                                   (None, 0.0)])]
    summary = summarise(seconds)
    window = messages.window_message("dev", "u", "r1", seconds, summary, 0, 0, "none")
    assert window["bpm_series"] == [70.0, None, 72.0, None]  # the 130 of a moving wrist is not reported
    assert window["bpm_mean"] == pytest.approx(71.0)
    assert window["bpm_mean"] == pytest.approx(np.mean([b for b in window["bpm_series"] if b is not None]))

def test_broken_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: 99999\n")
    result = run_cli("detect", "--simulate", "--config", str(bad))
    assert result.returncode == 2 and "mqtt.port" in result.stderr


def test_hat_absent_exits_3_with_a_clear_message(tmp_path):
    result = run_cli("collect", "--label", "happy", "--duration", "2", "--simulate", "--set", "sim.hat_present=false",
                     "--set", f"device.data_dir={tmp_path}")
    assert result.returncode == 3
    assert "no Grove Base Hat found" in result.stderr and "I2C enabled" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def daemon(broker, tmp_path):
    with open(tmp_path / "daemon.log", "wb") as log:  # a file, not an unread pipe that could fill and block it
        proc = subprocess.Popen([sys.executable, "-m", "pi", "run", *sim_args(broker, tmp_path)], cwd=ROOT,
                                stdout=log, stderr=log)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_daemon_serves_commands_rejects_bad_ones_and_stops_on_sigterm(daemon, recorder):
    rec = recorder(["iotsensors/#"])
    status_topic = "iotsensors/emotion-pi-01/status"
    assert rec.wait_for(lambda: any(s["state"] == "online" for s in rec.on(status_topic)), 20)
    command = "iotsensors/emotion-pi-01/command"
    rec.publish(command, b"this is not json")
    rec.publish(command, json.dumps({"command": "collect", "label": "ecstatic", "duration_s": 3}).encode())
    rec.publish(command, json.dumps({"command": "detect", "window_s": "ten"}).encode())
    rec.publish(command, b'{"command": "detect", "pad": "' + b"x" * (1 << 20) + b'"}')
    assert rec.wait_for(lambda: len(rec.on("iotsensors/emotion-pi-01/error")) >= 4)
    errors = [e["error"] for e in rec.on("iotsensors/emotion-pi-01/error")]
    assert "not JSON" in errors[0] and "ecstatic" in errors[1] and "'window_s' must be a number" in errors[2]
    assert "limit" in errors[3]
    rec.publish(command, json.dumps({"command": "detect", "window_s": 2, "request_id": "req-42"}).encode())
    rec.publish(command, json.dumps({"command": "collect", "label": "sad", "duration_s": 3}).encode())
    assert rec.wait_for(lambda: any(r["request_id"] == "req-42" for r in rec.on("iotsensors/infer/result")))
    assert rec.wait_for(lambda: len(rec.on("iotsensors/train")) >= 3)
    assert [r["mood"] for r in rec.on("iotsensors/train")] == ["sad"] * 3
    rec.publish(command, json.dumps({"command": "detect", "window_s": 2, "request_id": "req-42"}).encode())
    assert rec.wait_for(lambda: any("already used" in e["error"] for e in rec.on("iotsensors/emotion-pi-01/error")))
    assert len(rec.on("iotsensors/infer/result")) == 1  # the first detection is not replaced
    assert daemon.poll() is None  # bad commands did not hurt it
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(5)
    assert time.monotonic() - started < 2.0
    assert daemon.returncode == 0
    assert rec.wait_for(lambda: rec.on(status_topic)[-1]["state"] == "offline", 5)


def test_button_press_triggers_a_detection(broker, recorder, tmp_path):
    """In-process daemon; the button is pressed through gpiozero's mock pin factory."""
    import threading

    from pi.service import config
    from pi.service.daemon import Daemon
    from pi.service.device import create

    cfg = config.load(None, [f"mqtt.port={broker.port}", "sim.speed=20", f"device.data_dir={tmp_path}",
                             "detect.window_s=2"])
    rec = recorder(["iotsensors/infer/result"])
    d = Daemon(create(cfg, simulate=True))
    runner = threading.Thread(target=d.run, daemon=True)
    runner.start()
    assert d.device.publisher.ready.wait(10)
    pin = d.device.hw.pin_factory.pin(cfg["button"]["pin"])
    time.sleep(0.2)
    pin.drive_high()
    pin.drive_low()
    assert rec.wait_for(lambda: len(rec.on("iotsensors/infer/result")) == 1)
    d.stop_event.set()
    runner.join(3)
    assert not runner.is_alive()
