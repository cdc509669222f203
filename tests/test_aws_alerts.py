"""The AWS side of alerts, as the seed did with SNS: IoT rules (alerts, and devices gone offline) that
publish to one SNS topic, the role that lets IoT do it, and provision.sh creating them. Checked for
syntax here (no AWS account in CI): the rule SQL against AWS IoT SQL's SELECT ... FROM '<filter>' [WHERE]
form, topic filters, ARNs, least privilege, and that the fields selected exist in the messages."""
from __future__ import annotations

import json
import re
import subprocess

from conftest import ROOT

from pi.alerts.rules import alert_message
from pi.messaging.messages import status_message

AWS = ROOT / "scripts" / "aws"
SQL_RE = re.compile(r"^SELECT (?P<fields>.+?) FROM '(?P<topic>[^']+)'(?: WHERE (?P<where>.+))?$")
FIELD_RE = re.compile(r"^(?:\*|[a-z_]+|topic\(\d\) AS [a-z_]+)$")
WHERE_RE = re.compile(r"^[a-z_]+ = '[a-z_]+'$")


def statements() -> list[str]:
    return [line for line in (AWS / "rules.sql").read_text().splitlines() if line and not line.startswith("--")]


def check_sql(sql: str) -> tuple[list[str], str]:
    m = SQL_RE.fullmatch(sql)
    assert m, sql
    fields = [f.strip() for f in m["fields"].split(",")]
    assert all(FIELD_RE.fullmatch(f) for f in fields), fields
    levels = m["topic"].split("/")
    assert all(level in ("+", "#") or not set(level) & set("+#") for level in levels), m["topic"]
    assert "#" not in levels[:-1]
    if m["where"]:
        assert WHERE_RE.fullmatch(m["where"]), m["where"]
    return [f.split(" AS ")[-1] for f in fields], m["topic"]


def test_every_rule_statement_is_well_formed_and_selects_fields_that_exist():
    sqls = statements()
    assert len(sqls) == 4
    for sql in sqls:
        check_sql(sql)
    alert = alert_message("dev", "u", "arousal_high", 0.0, "text")
    fields, topic = check_sql(json.loads((AWS / "alert-rule.json").read_text())["sql"])
    assert topic == "iotsensors/+/alert" and set(fields) <= set(alert)
    fields, topic = check_sql(json.loads((AWS / "offline-rule.json").read_text())["sql"])
    status = status_message("d", "offline", 0)
    assert topic == "iotsensors/+/status" and set(fields) - {"device_id", "reason"} <= set(status)


def test_the_rules_publish_to_sns_through_a_role_that_may_do_only_that():
    topic_arn = "arn:aws:sns:REGION:ACCOUNT_ID:emotion-edge-alerts"
    for name in ("alert-rule.json", "offline-rule.json"):
        rule = json.loads((AWS / name).read_text())
        assert rule["sql"] in statements() and rule["awsIotSqlVersion"] == "2016-03-23"
        (action,) = rule["actions"]
        assert action["sns"]["targetArn"] == topic_arn and action["sns"]["messageFormat"] == "RAW"
        assert re.fullmatch(r"arn:aws:iam::ACCOUNT_ID:role/[\w+=,.@-]+", action["sns"]["roleArn"])
    policy = json.loads((AWS / "sns-role-policy.json").read_text())
    assert [(s["Effect"], s["Action"], s["Resource"]) for s in policy["Statement"]] == [
        ("Allow", "sns:Publish", topic_arn)]
    trust = json.loads((AWS / "sns-role-trust.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "iot.amazonaws.com"}
    device = json.loads((AWS / "iot-policy.json").read_text())
    published = [r for s in device["Statement"] if "iot:Publish" in s["Action"] for r in s["Resource"]]
    assert "arn:aws:iot:REGION:ACCOUNT_ID:topic/iotsensors/${iot:Connection.Thing.ThingName}/*" in published


def test_provision_script_parses_and_creates_the_alert_path():
    script = (AWS / "provision.sh").read_text()
    assert subprocess.run(["bash", "-n", str(AWS / "provision.sh")]).returncode == 0
    for needed in ("sns create-topic", "--protocol email", "--protocol sms", "create-topic-rule", "alert-rule.json",
                   "offline-rule.json", "sns-role-policy.json", "sns-role-trust.json"):
        assert needed in script, needed
