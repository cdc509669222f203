"""Mutual TLS for real: a Mosquitto with `require_certificate true`, a CA and device certificates the test
generates with openssl, both transports (paho and AWSIoTPythonSDK)."""
import json
import os
import shutil
import subprocess
import time

import pytest
from conftest import ROOT, Broker, free_port, run_cli

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certificates")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def make_cert(d, name, ca, san=None):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.pem", "-extfile", str(ext), cwd=d)
    os.chmod(d / f"{name}.key", 0o600)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    make_cert(d, "server", "ca", san="IP:127.0.0.1,DNS:localhost")
    make_cert(d, "emotion-pi-01", "ca")
    make_cert(d, "recorder", "ca")
    make_cert(d, "impostor", "rogue-ca")
    return d


@pytest.fixture
def tls_broker(tmp_path, pki):
    b = Broker(tmp_path)
    b.conf.write_text(f"listener {b.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                      f"cafile {pki}/ca.pem\ncertfile {pki}/server.pem\nkeyfile {pki}/server.key\n"
                      f"require_certificate true\n{b.run_as}")
    b.start()
    yield b
    b.stop()


def tls_args(broker, pki, tmp_path, cert="emotion-pi-01", transport="paho"):
    return ["--simulate", "--set", f"mqtt.port={broker.port}", "--set", "mqtt.tls=true",
            "--set", f"mqtt.ca_file={pki}/ca.pem", "--set", f"mqtt.cert_file={pki}/{cert}.pem",
            "--set", f"mqtt.key_file={pki}/{cert}.key", "--set", f"mqtt.transport={transport}",
            "--set", "sim.speed=20", "--set", f"device.data_dir={tmp_path}", "--set", "log.format=text",
            "--set", "mqtt.publish_timeout=4"]


def tls_recorder(broker, pki):
    import ssl
    import threading

    import paho.mqtt.client as mqtt

    got, ready = [], threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"recorder-{free_port()}")
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "recorder.pem"), str(pki / "recorder.key"))
    c.tls_set_context(ctx)
    c.on_connect = lambda cl, *a: cl.subscribe("iotsensors/train", 1)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    assert ready.wait(10)
    return c, got


@pytest.mark.parametrize("transport", ["paho", "awsiot"])
def test_right_certificate_connects_and_publishes(tls_broker, pki, tmp_path, transport):
    client, got = tls_recorder(tls_broker, pki)
    try:
        result = run_cli("collect", "--label", "happy", "--duration", "3",
                         *tls_args(tls_broker, pki, tmp_path, transport=transport))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["waiting_in_outbox"] == 0
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [m["seq"] for m in got] == [0, 1, 2]
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.parametrize("transport", ["paho", "awsiot"])
def test_wrong_certificate_is_refused_and_the_daemon_says_why(tls_broker, pki, tmp_path, transport):
    result = run_cli("collect", "--label", "happy", "--duration", "2",
                     *tls_args(tls_broker, pki, tmp_path, cert="impostor", transport=transport))
    assert result.returncode == 0  # nothing lost: the records wait in the outbox for a right certificate
    assert json.loads(result.stdout)["waiting_in_outbox"] == 2
    assert "refused our TLS connection (TLSV1_ALERT_UNKNOWN_CA)" in result.stderr, result.stderr
    assert "BEGIN" not in result.stderr  # no key or certificate material in the logs


def test_missing_certificate_file_exits_2_naming_the_key(pki, tmp_path):
    result = run_cli("check-config", "--set", "mqtt.tls=true", "--set", f"mqtt.ca_file={pki}/ca.pem",
                     "--set", f"mqtt.cert_file={tmp_path}/nope.pem", "--set", f"mqtt.key_file={pki}/emotion-pi-01.key")
    assert result.returncode == 2 and "mqtt.cert_file: file not found" in result.stderr


def test_private_key_readable_by_others_is_refused_with_the_fix(pki, tmp_path):
    key = tmp_path / "device.key"
    shutil.copy(pki / "emotion-pi-01.key", key)
    os.chmod(key, 0o644)
    result = run_cli("check-config", "--set", "mqtt.tls=true", "--set", f"mqtt.ca_file={pki}/ca.pem",
                     "--set", f"mqtt.cert_file={pki}/emotion-pi-01.pem", "--set", f"mqtt.key_file={key}")
    assert result.returncode == 2
    assert "mqtt.key_file" in result.stderr and f"chmod 600 {key}" in result.stderr
    assert "PRIVATE KEY" not in result.stderr


def test_aws_iot_core_profile_rules():
    result = run_cli("check-config", "--set", "mqtt.profile=aws-iot-core", "--set", "mqtt.port=443",
                     "--set", "mqtt.keepalive=20")
    assert result.returncode == 2
    for key in ("mqtt.tls", "mqtt.alpn", "mqtt.keepalive", "mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file"):
        assert key in result.stderr


def test_iot_policy_and_rules_confine_the_device():
    policy = json.loads((ROOT / "scripts" / "aws" / "iot-policy.json").read_text())
    by_action = {}
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert statement["Effect"] == "Allow" and not any(r.endswith(":*") or r == "*" for r in resources)
        for action in actions:
            by_action.setdefault(action, []).extend(resources)
    assert by_action["iot:Connect"] == ["arn:aws:iot:REGION:ACCOUNT_ID:client/${iot:Connection.Thing.ThingName}"]
    for action in ("iot:Publish", "iot:Subscribe", "iot:Receive"):
        prefix = "arn:aws:iot:REGION:ACCOUNT_ID:"
        assert all(r.startswith(prefix) and r[len(prefix):].split("/", 1)[1].startswith("iotsensors/")
                   for r in by_action[action])
    rules = (ROOT / "scripts" / "aws" / "rules.sql").read_text()
    assert "SELECT * FROM 'iotsensors/train'" in rules and "SELECT * FROM 'iotsensors/infer'" in rules


def test_no_client_certificate_is_refused_and_the_daemon_says_why(tls_broker, pki, tmp_path):
    result = run_cli("collect", "--label", "happy", "--duration", "2", "--simulate",
                     "--set", f"mqtt.port={tls_broker.port}", "--set", "mqtt.tls=true",
                     "--set", f"mqtt.ca_file={pki}/ca.pem", "--set", "sim.speed=20",
                     "--set", f"device.data_dir={tmp_path}", "--set", "log.format=text",
                     "--set", "mqtt.publish_timeout=3")
    assert result.returncode == 0
    assert json.loads(result.stdout)["waiting_in_outbox"] == 2
    assert "refused our TLS connection" in result.stderr, result.stderr
