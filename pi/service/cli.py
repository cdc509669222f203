"""Command line: `emotion-edge run | detect | collect | check-config | fer-eval | fit | import-e4 | sleep | mood |
web-token | ...` (also `python -m pi`).

Exit codes: 0 success, 1 runtime failure, 2 bad configuration, arguments or input file, 3 hardware missing.
"""
from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
import time
from pathlib import Path

from pi.errors import ConfigError, EmotionEdgeError, HardwareError, ImportDataError
from pi.messaging.commands import MAX_WINDOW_S
from pi.reports import cli as sleep_cli
from pi.service import config as config_mod
from pi.service import output
from pi.service.output import emit

log = logging.getLogger("emotion-edge")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="YAML config (default: the built-in defaults, which config.yaml documents)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key, e.g. --set mqtt.port=1884 (repeatable)")
    p.add_argument("--simulate", action="store_true", help="simulated I2C hat, person, camera and button")


def _scales_argument(text: str) -> tuple[float, ...]:
    from pi.vision.fer import scales_argument

    return scales_argument(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emotion-edge", description="Edge emotion detection daemon")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the daemon (button and MQTT commands)")
    _common(p)
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this many clock seconds")
    p = sub.add_parser("detect", help="one detection now; prints the result JSON")
    _common(p)
    p.add_argument("--window", type=float, default=None, help="window length in seconds")
    p = sub.add_parser("collect", help="a labelled training session, one record per second")
    _common(p)
    p.add_argument("--label", required=True)
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p = sub.add_parser("check-config", help="validate and print the effective config")
    _common(p)
    p = sub.add_parser("fit", help="train the user's personal physiology model (leave-one-session-out)")
    _common(p)
    p.add_argument("--user", default=None, help="the wearer (default: device.user)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = sub.add_parser("feedback", help="a carer's correction of a result")
    _common(p)
    p.add_argument("request_id")
    p.add_argument("label")
    p.add_argument("--user", default=None)
    p = sub.add_parser("rollback", help="install an earlier personal model version")
    _common(p)
    p.add_argument("version", type=int)
    p.add_argument("--user", default=None)
    p = sub.add_parser("web-token", help="make a new dashboard token, store it (mode 600) and print it")
    _common(p)
    p = sub.add_parser("import-e4", help="an Empatica E4 export folder -> labelled sessions in the store")
    _common(p)
    p.add_argument("folder", type=Path, help="the E4 export (EDA.csv, BVP.csv, HR.csv, IBI.csv)")
    p.add_argument("--user", required=True, help="the wearer the sessions belong to")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", type=Path, help="segments file: start,end,label (UTC ISO 8601 or unix)")
    labels.add_argument("--stress-predict", action="store_true",
                        help="labels from the Stress-Predict dataset the folder belongs to (<dataset>/Raw_data/SXX)")
    p = sub.add_parser("fer-eval", help="evaluate the expression model on a dataset .npz")
    p.add_argument("data", type=Path)
    p.add_argument("--model", type=Path, default=None, help="TFLite file (default: the configured model)")
    p.add_argument("--metadata", type=Path, default=None)
    p.add_argument("--limit", type=int, default=None,
                   help="a random sample of N images, stratified by class (files are often sorted by class)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the mirrored face, or not (default: not; with --pipeline, the configured "
                        "face.flip_average)")
    p.add_argument("--scales", type=_scales_argument, default=None, metavar="S,S,...",
                   help="also average zoomed views, e.g. 0.9,1.0,1.1, one invoke each (default: 1.0, the model "
                        "as shipped, whose graph already averages its own views; with --pipeline, the "
                        "configured face.view_scales)")
    p.add_argument("--pipeline", action="store_true",
                   help="the images are full photos (N x H x W grey or N x H x W x 3 BGR): run the whole face "
                        "path on them with the configured face.* settings (detection, crop, views, "
                        "classification) and report the detection rate too")
    p.add_argument("--config", type=Path, default=None, help="YAML config whose face.* settings apply")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key, e.g. --set face.align=true (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    sleep_cli.add_parsers(sub, _common)
    return parser


def load_config(args) -> dict:
    return config_mod.load(args.config, args.overrides)


def _finish(device, cfg) -> int:
    """Wait for the broker's acknowledgements (up to mqtt.publish_timeout), then close. Whatever is not
    acknowledged by then is safe in the outbox and goes out with the next run; say how much."""
    left = device.publisher.flush(cfg["mqtt"]["publish_timeout"])
    device.stop(flush_timeout=0.5)
    if left:
        log.warning("%d message(s) wait in the outbox %s; the next emotion-edge run sends them", left,
                    device.publisher.outbox.path)
    return left


def cmd_check_config(args) -> int:
    cfg = load_config(args)
    emit(config_mod.dump(cfg).rstrip("\n"))
    return 0


def cmd_collect(args) -> int:
    from pi.service.device import create

    cfg = load_config(args)
    if args.label not in cfg["collect"]["labels"]:
        raise ConfigError({"--label": f"unknown label {args.label!r}; known: {', '.join(cfg['collect']['labels'])}"})
    if args.duration <= 0:
        raise ConfigError({"--duration": "must be positive"})
    device = create(cfg, args.simulate)
    try:
        device.start()
        device.warm_up()
        summary = device.collect(args.label, args.duration)
    finally:
        left = _finish(device, cfg)
    emit(json.dumps({"session_id": summary.session_id, "label": summary.label, "records": summary.records,
                      "waiting_in_outbox": left}))
    return 0


def cmd_detect(args) -> int:
    from pi.service.device import create

    cfg = load_config(args)
    if args.window is not None and not 1 <= args.window <= MAX_WINDOW_S:
        raise ConfigError({"--window": f"must be between 1 and {MAX_WINDOW_S:g} seconds"})
    device = create(cfg, args.simulate)
    try:
        device.start()
        device.warm_up()
        result = device.detect(args.window)
    finally:
        left = _finish(device, cfg)
    if result is None:  # only a stop request ends a detection early; the CLI makes none, but say so if it happens
        raise EmotionEdgeError("the detection was stopped before its window ended; nothing was concluded")
    result["waiting_in_outbox"] = left
    emit(json.dumps(result))
    return 0


def cmd_run(args) -> int:
    from pi.service.daemon import Daemon
    from pi.service.device import create
    from pi.web.hub import Hub

    cfg = load_config(args)
    daemon = Daemon(create(cfg, args.simulate))
    hub = Hub(daemon)  # alerts, Home Assistant state and the dashboard's events, with or without the web
    daemon.services.append(hub)
    if cfg["web"]["enabled"]:
        from pi.web.server import WebServer  # imported only when served: web off costs no HTTP modules

        daemon.services.append(WebServer(hub))
    daemon.install_signal_handlers()
    daemon.run(args.max_seconds)
    return 0


def cmd_web_token(args) -> int:
    """A new strong dashboard token in DATA_DIR/web-token (mode 600), printed once; replaces an old one."""
    import os
    import secrets

    cfg = load_config(args)
    path = config_mod.web_token_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    print(f"stored in {path} (mode 600); restart the service to use it; open the dashboard once as "
          f"http://<device>:{cfg['web']['port']}/?token=<token>", file=sys.stderr)
    emit(token)
    return 0


def cmd_fer_eval(args) -> int:
    from pi.vision.evaluation import evaluate, evaluate_pipeline, format_pipeline_report, format_report
    from pi.vision.face import FaceDetector
    from pi.vision.fer import FaceViews

    cfg = config_mod.load(args.config, args.overrides)
    face = cfg["face"]
    model, metadata = args.model or Path(face["model"]), args.metadata or Path(face["metadata"])
    if args.pipeline:  # the daemon's views, as configured, unless the command line names others
        views = FaceViews(args.scales or tuple(face["view_scales"]),
                          face["flip_average"] if args.flip is None else args.flip, face["normalised_view"])
    else:  # the model alone
        views = FaceViews(args.scales or (1.0,), bool(args.flip))
    if args.pipeline:
        report = evaluate_pipeline(args.data, model, metadata, FaceDetector.from_config(face), limit=args.limit,
                                   views=views, threads=face["threads"], seed=args.seed)
        emit(json.dumps(report) if args.json else format_pipeline_report(report))
        return 0
    report = evaluate(args.data, model, metadata, limit=args.limit, views=views, seed=args.seed)
    emit(json.dumps(report) if args.json else format_report(report))
    return 0


def _personal(args):
    from pi.personal.model import ModelRegistry
    from pi.service.device import open_store

    if args.user:
        args.overrides.append(f"device.user={args.user}")
    cfg = load_config(args)
    return cfg, open_store(cfg), ModelRegistry(cfg["device"]["data_dir"], cfg["device"]["user"])


def cmd_fit(args) -> int:
    from pi.personal.model import fit_user

    cfg, store, registry = _personal(args)
    report, _ = fit_user(store.records(cfg["device"]["user"]), registry)
    report["user"] = cfg["device"]["user"]
    if args.json:
        emit(json.dumps(report))
    elif "accuracy" in report:
        emit(f"user {report['user']}: {report['samples']} seconds in {report['sessions']} sessions, classes "
              f"{', '.join(report['classes'])} (baseline from {report['baseline_source']})")
        emit(f"leave-one-session-out accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f} "
              f"(majority class: {report['majority_accuracy']:.3f} / {report['majority_macro_f1']:.3f})")
        emit("confusion (rows true):")
        for name, row in zip(report["classes"], report["confusion"]):
            emit(f"  {name:<10}" + " ".join(f"{v:>6}" for v in row))
    print(f"installed version {report['version']}" if report.get("installed") else
          f"not installed: {report.get('reason')}", file=sys.stderr)
    return 0 if report.get("installed") else 1


def cmd_feedback(args) -> int:
    from pi.personal.feedback import apply_feedback

    cfg, store, registry = _personal(args)
    emit(json.dumps(apply_feedback(cfg, store, registry, args.request_id, args.label, time.time())))
    return 0


def cmd_import_e4(args) -> int:
    from pi.ingest import e4

    cfg, store, _ = _personal(args)
    rec = e4.read_recording(args.folder)
    segments = (e4.read_segments(args.labels) if args.labels else e4.stress_predict_segments(args.folder, rec))
    emit(json.dumps(e4.import_recording(store, rec, cfg["device"]["user"], segments)))
    return 0


def cmd_rollback(args) -> int:
    cfg, store, registry = _personal(args)
    try:
        registry.install(args.version)
    except FileNotFoundError as exc:
        raise ConfigError({"version": f"{exc}; available: {registry.versions()}"}) from None
    emit(json.dumps({"user": cfg["device"]["user"], "installed": args.version}))
    return 0


COMMANDS = {"run": cmd_run, "detect": cmd_detect, "collect": cmd_collect, "check-config": cmd_check_config,
            "fer-eval": cmd_fer_eval, "web-token": cmd_web_token, "import-e4": cmd_import_e4,
            "fit": cmd_fit, "feedback": cmd_feedback, "rollback": cmd_rollback, **sleep_cli.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    output.RESULTS, sys.stdout = sys.stdout, sys.stderr
    try:
        return _main(argv)
    finally:
        sys.stdout = output.RESULTS


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    level, fmt = "INFO", "json"
    if args.command == "web-token":  # it makes the token that a non-loopback web.bind would demand
        args.overrides.append("web.enabled=false")
    try:
        if args.command != "fer-eval":
            cfg = load_config(args)
            level, fmt = cfg["log"]["level"], cfg["log"]["format"]
    except ConfigError as exc:
        print(f"emotion-edge: {exc}", file=sys.stderr)
        return 2
    from pi.service import logs

    logs.setup(level, fmt)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ImportDataError) as exc:  # bad configuration, arguments or input file
        print(f"emotion-edge: {exc}", file=sys.stderr)
        return 2
    except HardwareError as exc:
        log.error("%s", exc)
        print(f"emotion-edge: hardware problem: {exc}", file=sys.stderr)
        return 3
    except EmotionEdgeError as exc:
        log.error("%s", exc)
        print(f"emotion-edge: {exc}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error) as exc:  # e.g. a data directory this user may not write
        log.error("%s", exc)
        print(f"emotion-edge: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
