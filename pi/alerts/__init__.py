"""Alerts that reach a person: rules over results and per-second physiology (`rules`), e-mail (`mail`).

Between pi.messaging and pi.service in the layers: the rules see plain results and records, and publish
through whatever `publish(topic, message)` they are given (the outbox, so no alert is lost offline)."""
