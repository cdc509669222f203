"""The `sleep` and `mood` command groups (`emotion-edge sleep import|report`, `emotion-edge mood import`).

Kept apart from pi/service/cli.py, which only registers them: `add_parsers(sub, common)` and `COMMANDS`.
Bad input files raise `ImportDataError` (exit 2, like bad arguments); a missing `report` extra raises
`MissingExtraError` (exit 1).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from datetime import date
from pathlib import Path
from typing import Callable

from pi.errors import ConfigError
from pi.service import output

log = logging.getLogger("emotion-edge")


def _date_arg(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def add_parsers(sub, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `sleep` (import, report) and `mood` (import) to the top-level sub-parsers."""
    p = sub.add_parser("sleep", help="wearable sleep: import nights, report sleep against the morning's emotion")
    group = p.add_subparsers(dest="sleep_command", required=True)
    q = group.add_parser("import", help="import a Fitbit sleep JSON file or folder, or a CSV")
    common(q)
    q.add_argument("path", type=Path, help="sleep-*.json, a folder of them, or date,minutes_asleep[,efficiency] CSV")
    q.add_argument("--user", required=True, help="whose nights these are")
    q.add_argument("--tz", default=None, help="IANA zone of the tracker's local times (default sleep.timezone, "
                                              "else this device's zone)")
    q = group.add_parser("report", help="statistics, plots and HTML: sleep against the next morning's score")
    common(q)
    q.add_argument("--user", action="append", default=None, metavar="ID",
                   help="a person (repeatable), or 'all' for everyone with imported nights (default device.user)")
    q.add_argument("--from", dest="date_from", type=_date_arg, default=None, metavar="DATE")
    q.add_argument("--to", dest="date_to", type=_date_arg, default=None, metavar="DATE")
    q.add_argument("--mood", choices=("device", "self"), default="device",
                   help="device: the device's own results after waking (default); self: imported self-reports")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--html", type=Path, default=None, metavar="OUT", help="write the self-contained HTML report")
    q.add_argument("--plots", type=Path, default=None, metavar="DIR", help="write the PNG plots into DIR")
    q.add_argument("--publish", action="store_true",
                   help="publish a summary to mqtt.report_topic through the outbox; waits up to mqtt.publish_timeout")
    p = sub.add_parser("mood", help="self-reported mood: import daily reports")
    group = p.add_subparsers(dest="mood_command", required=True)
    q = group.add_parser("import", help="import a mood CSV (PMData pmsys/wellness.csv format)")
    common(q)
    q.add_argument("path", type=Path)
    q.add_argument("--user", required=True)
    q.add_argument("--tz", default=None, help="zone of time stamps written without one (default sleep.timezone)")


def _config(args) -> dict:
    from pi.service import config

    return config.load(args.config, args.overrides)


def _open(cfg: dict):
    from pi.ingest.tables import connect, store_path

    return connect(store_path(cfg))


def _zone(cfg: dict, override: str | None):
    from pi.ingest.tables import local_zone
    from pi.service.config import _timezone

    name = override if override is not None else cfg["sleep"]["timezone"]
    problem = _timezone(override) if override is not None else None
    if problem:
        raise ConfigError({"--tz": problem})
    return local_zone(name)


def _emit(text: str) -> None:
    output.emit(text)


def _run_import(args, importer) -> int:
    """One importer (`import_sleep` or `import_mood`) on the configured store; prints its summary."""
    cfg = _config(args)
    zone, name = _zone(cfg, args.tz)
    db = _open(cfg)
    try:
        summary = importer(db, args.user, args.path, zone, name)
    finally:
        db.close()
    _emit(json.dumps(summary.as_dict()))
    return 0


def cmd_sleep_import(args) -> int:
    from pi.ingest.sleep import import_sleep

    return _run_import(args, import_sleep)


def cmd_mood_import(args) -> int:
    from pi.ingest.mood import import_mood

    return _run_import(args, import_mood)


def _private_write(path: Path, data: bytes) -> None:
    """Reports are health data: written with mode 600 (an existing file keeps its own mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _text_summary(report: dict) -> list[str]:
    def n(v, d=3):
        return "–" if v is None else (f"[{v[0]:.{d}f}, {v[1]:.{d}f}]" if isinstance(v, list) else f"{v:.{d}g}"
                                       if isinstance(v, float) and 0 < abs(v) < 0.01 else f"{v:.{d}f}"
                                       if isinstance(v, float) else str(v))

    c = report["counts"]
    lines = [f"users {', '.join(report['users'] or report['users_requested'])}; mood source {report['mood_source']}: "
             f"{report['score_definition']}",
             f"n {report['n']} paired nights ({c['nights']} nights, {c['nights_without_score']} without a score, "
             f"{c['naps_left_out']} naps left out)",
             f"pearson r {n(report['pearson_r'])} (p {n(report['pearson_p'])}, 95% CI {n(report['pearson_ci'])}); "
             f"spearman {n(report['spearman_r'])} (p {n(report['spearman_p'])})",
             f"slope {n(report['slope_per_hour'])} per hour of sleep (95% CI {n(report['slope_ci'])})"]
    if report["n_users"] > 1:
        lines.append(f"within-person r {n(report['within_person_r'])} (p {n(report['within_person_p'])}, 95% CI "
                     f"{n(report['within_person_ci'])}, df {report['within_person_df']})")
        m = report["mixed_model"]
        if m:
            lines.append(f"mixed model slope {n(m['slope_per_hour'])} per hour (95% CI {n(m['slope_ci'])}, p "
                         f"{n(m['slope_p'])}; person intercept variance {n(m['person_intercept_variance'])})")
    lines.append(f"short (<{report['short_below_h']:g} h) mean {n(report['short_mean'])} (n {report['short_n']}); "
                 f"long (>{report['long_above_h']:g} h) mean {n(report['long_mean'])} (n {report['long_n']}); "
                 f"long - short {n(report['long_minus_short'])} (95% CI {n(report['long_minus_short_ci'])})")
    lines += [f"note: {note}" for note in report["notes"]]
    return lines


def publish_summary(cfg: dict, message: dict) -> int:
    """Put the summary in the device's persistent outbox and send it like `collect` does: wait for the
    PUBACK up to mqtt.publish_timeout; return how many messages still wait in the outbox (safe on disk,
    sent by the next emotion-edge run). Takes the data directory's lock, as the daemon holds it."""
    from pi.clock import Clock
    from pi.messaging.outbox import Outbox
    from pi.messaging.publisher import make_publisher
    from pi.service.lock import DataDirLock

    data_dir = Path(cfg["device"]["data_dir"])
    lock = DataDirLock(data_dir).acquire()
    try:
        outbox = Outbox(data_dir / "outbox.sqlite", cfg["mqtt"]["outbox_max_messages"])
        publisher = make_publisher(cfg["mqtt"], cfg["device"]["id"], Clock(), outbox, cfg["mqtt"]["inflight"])
        try:
            publisher.start(min(5.0, cfg["mqtt"]["publish_timeout"]))
            publisher.publish(cfg["mqtt"]["report_topic"], message)
            left = publisher.flush(cfg["mqtt"]["publish_timeout"])
        finally:
            publisher.stop(0.5)
            outbox.close()
        if left:
            log.warning("%d message(s) wait in the outbox %s; the next emotion-edge run sends them", left, outbox.path)
        return left
    finally:
        lock.release()


def cmd_sleep_report(args) -> int:
    from pi.reports import sleep as rs

    cfg = _config(args)
    db = _open(cfg)
    try:
        requested = args.user or [cfg["device"]["user"]]
        known = rs.known_users(db)
        if "all" in requested:
            if len(requested) > 1:
                raise ConfigError({"--user": "'all' cannot be combined with named users"})
            users = known
        else:
            users = list(dict.fromkeys(requested))
        unknown = [u for u in users if u not in known]
        if unknown or not users:
            raise ConfigError({"--user": f"no imported nights for {', '.join(unknown) or 'anyone'} "
                                         f"(users with nights: {', '.join(known) or 'none'}; "
                                         "import with `emotion-edge sleep import`)"})
        if args.date_from and args.date_to and args.date_from > args.date_to:
            raise ConfigError({"--from": "must not be after --to"})
        report, pairs = rs.analyse(db, users, args.mood, args.date_from, args.date_to, cfg["sleep"]["morning_hours"])
    finally:
        db.close()
    outputs = {}
    if args.html or args.plots:
        images = rs.plots(pairs, report)
        if args.plots:
            for name, data in images.items():
                _private_write(args.plots / name, data)
                outputs[name] = str(args.plots / name)
        if args.html:
            _private_write(args.html, rs.render_html(report, images).encode())
            outputs["html"] = str(args.html)
    if args.publish:
        import time

        report["waiting_in_outbox"] = publish_summary(cfg, rs.summary_message(cfg["device"]["id"], report,
                                                                               time.time()))
    report["outputs"] = outputs
    if args.json:
        _emit(json.dumps(report))
    else:
        for line in _text_summary(report):
            _emit(line)
        for path in outputs.values():
            _emit(f"wrote {path}")
        if args.publish:
            _emit(f"published to {cfg['mqtt']['report_topic']}; waiting_in_outbox {report['waiting_in_outbox']}")
    return 0


def cmd_sleep(args) -> int:
    return {"import": cmd_sleep_import, "report": cmd_sleep_report}[args.sleep_command](args)


def cmd_mood(args) -> int:
    return {"import": cmd_mood_import}[args.mood_command](args)


COMMANDS = {"sleep": cmd_sleep, "mood": cmd_mood}
