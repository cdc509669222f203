import pytest
from conftest import ROOT, run_cli

from pi.errors import ConfigError
from pi.service import config


def test_defaults_are_valid_and_resolved():
    cfg = config.load(None)
    assert cfg["mqtt"]["train_topic"] == "iotsensors/train"
    assert cfg["mqtt"]["command_topic"] == f"iotsensors/{cfg['device']['id']}/command"
    assert cfg["sampling"]["rate_hz"] >= 50


def test_shipped_config_yaml_is_valid():
    cfg = config.load(ROOT / "config.yaml")
    assert cfg == config.load(None)  # config.yaml documents exactly the built-in defaults


def test_file_sets_only_what_it_changes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  port: 1884\nsim:\n  emotion: angry\n")
    cfg = config.load(path)
    assert cfg["mqtt"]["port"] == 1884 and cfg["mqtt"]["host"] == "127.0.0.1"
    assert cfg["sim"]["emotion"] == "angry" and cfg["gsr"]["channel"] == 0


def test_every_problem_is_reported_with_its_dotted_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  port: '1883'\n  colour: blue\ngsr:\n  channel: 9\nnonsense: {}\n"
                    "i2c:\n  address: 0x10\nheart:\n  source: fingertip\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    problems = info.value.problems
    assert set(problems) == {"mqtt.port", "mqtt.colour", "gsr.channel", "nonsense", "i2c.address",
                             "heart.source"}
    assert "expected int" in problems["mqtt.port"]
    assert "unknown key" in problems["mqtt.colour"]
    assert "<= 7" in problems["gsr.channel"]
    assert "0x04" in problems["i2c.address"]


@pytest.mark.parametrize("override,key", [
    ("sampling.rate_hz=.nan", "sampling.rate_hz"),
    ("detect.emotions=[]", "detect.emotions"),
    ("mqtt.error_topic=iotsensors/{device_id}/command", "mqtt.error_topic"),
    ("face.view_scales=[]", "face.view_scales"),
    ("face.view_scales=[1.0, 3.0]", "face.view_scales"),
    ("face.view_scales=[1.0, yes]", "face.view_scales"),
])
def test_values_that_would_fail_later_are_refused_now(override, key):
    with pytest.raises(ConfigError) as info:
        config.load(None, [override])
    assert key in info.value.problems


def test_cross_field_check(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load(None, ["heart.channel=0"])
    assert "heart.channel" in info.value.problems


def test_set_overrides_parse_yaml_scalars():
    cfg = config.load(None, ["mqtt.port=18830", "sim.speed=20", "button.enabled=false", "sim.bpm=null"])
    assert cfg["mqtt"]["port"] == 18830 and cfg["sim"]["speed"] == 20.0
    assert cfg["button"]["enabled"] is False and cfg["sim"]["bpm"] is None


@pytest.mark.parametrize("bad", ["mqtt.port", "port=1", "a.b.c=1"])
def test_malformed_set_is_an_error(bad):
    with pytest.raises(ConfigError):
        config.load(None, [bad])


def test_not_yaml_and_not_a_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mqtt: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(p)


def test_cli_exits_2_naming_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sampling:\n  rate_hz: fast\n")
    result = run_cli("check-config", "--config", str(p))
    assert result.returncode == 2
    assert "sampling.rate_hz" in result.stderr and "expected float" in result.stderr
    result = run_cli("collect", "--simulate", "--label", "happy", "--duration", "1", "--set", "mqtt.qos=2")
    assert result.returncode == 2 and "mqtt.qos" in result.stderr
    result = run_cli("check-config", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "cannot read config file" in result.stderr


SECRET = "s3cret-Hunter2"


@pytest.mark.e2e
def test_check_config_never_prints_the_password():
    result = run_cli("check-config", "--set", f"mqtt.password={SECRET}", "--set", "mqtt.username=carer")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert f"password: '{config.MASK}'" in result.stdout and "username: carer" in result.stdout


def test_config_errors_never_show_the_password(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  password: 918273645\n")  # a number where a string belongs
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert "918273645" not in str(info.value) and "hidden" in info.value.problems["mqtt.password"]
    with pytest.raises(ConfigError) as info:
        config.load(None, [f"mqtt.password=[{SECRET}"])  # not valid YAML: the parser's message quotes it
    assert SECRET not in str(info.value)


def test_password_from_a_private_file(tmp_path):
    secret_file = tmp_path / "mqtt-password"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        config.load(None, [f"mqtt.password_file={secret_file}"])
    assert "chmod 600" in info.value.problems["mqtt.password_file"]
    secret_file.chmod(0o600)
    cfg = config.load(None, [f"mqtt.password_file={secret_file}"])
    assert cfg["mqtt"]["password"] == SECRET
    assert SECRET not in config.dump(cfg)
    with pytest.raises(ConfigError) as info:
        config.load(None, [f"mqtt.password_file={secret_file}", "mqtt.password=other"])
    assert "not both" in info.value.problems["mqtt.password_file"]


@pytest.mark.e2e
def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("device:\n  user: 'Zoë'\n".encode("latin-1"))
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "not UTF-8" in result.stderr and "line 2" in result.stderr and "Traceback" not in result.stderr
