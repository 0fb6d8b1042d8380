"""``dicomnode`` command line: serve, worker, demo, push, echo, results, worklist, resend, migrate,
audit, import-truth, monitor."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from dicomnode.config import ConfigError, Settings, load_settings
from dicomnode.logconfig import configure_logging


def _settings(args: argparse.Namespace) -> Settings:
    s = load_settings(args.config)
    overrides = {}
    if getattr(args, "storage_dir", None):
        overrides["storage_dir"] = Path(args.storage_dir)
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    return s.with_overrides(**overrides) if overrides else s


def cmd_serve(args: argparse.Namespace) -> int:
    from dicomnode.node import Node
    from worker.runners import make_runner

    s = _settings(args)
    configure_logging(s.log_level, s.log_format)
    metrics = store = None
    if s.metrics_port:  # one /metrics for the node and every worker: it reads the shared SQL
        from dicomnode.ops.metrics import start_metrics_server
        from dicomnode.store.db import Store

        store = Store(s.effective_database_url)
        metrics = start_metrics_server(s, store)
    try:
        Node(s, make_runner).serve_forever()
    finally:
        if metrics is not None and store is not None:
            metrics.stop()
            store.dispose()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    s = _settings(args)
    if not s.broker_url:
        raise ConfigError("dicomnode worker needs DICOMNODE_BROKER_URL, e.g. redis://127.0.0.1:6379/0")
    configure_logging(s.log_level, s.log_format)
    if args.config:
        # The tasks build their settings in the worker processes from the environment
        # (worker.tasks.get_pipeline): hand the file on, or they would run on the defaults.
        os.environ["DICOMNODE_CONFIG"] = str(Path(args.config).resolve())
    from dicomnode.model.inference import PneumoniaModel
    from worker.app import make_celery

    # Fail now, not at the first study, if the model is missing or not ours.
    model = PneumoniaModel(s.model_path)
    print(f"model {model.card.name} {model.card.version} on {model.providers[0]}", file=sys.stderr)
    del model

    app = make_celery(s)
    argv = ["worker", "--loglevel", s.log_level.upper(), "-Q", s.queue, "--prefetch-multiplier", "1"]
    argv += ["--concurrency", str(args.concurrency), "--pool", args.pool]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    app.worker_main(argv)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dicomnode.cli.demo import run_demo

    s = _settings(args)
    if "DICOMNODE_PORT" not in os.environ and args.port is None:
        s = s.with_overrides(port=0)
    s = s.with_overrides(quiet_seconds=args.quiet)
    configure_logging("warning", s.log_format)
    rows = run_demo(s, studies=args.studies, seed=args.seed)
    return 0 if all(r.score is not None for r in rows) else 1


def cmd_push(args: argparse.Namespace) -> int:
    from dicomnode.delivery.push import expand, push_files

    files = expand([Path(p) for p in args.paths])
    if not files:
        print("no files to send", file=sys.stderr)
        return 2
    res = push_files(files, args.host, args.port, called_ae=args.called_ae, calling_ae=args.calling_ae)
    ok = sum(r.status == 0 for r in res)
    for r in res:
        if r.status != 0:
            st = f"0x{r.status:04X}" if r.status is not None else "not sent"
            print(f"{r.path}: {st} {r.error or ''}")
    print(f"{ok}/{len(files)} stored")
    return 0 if ok == len(files) else 1


def _echo_tls(args: argparse.Namespace) -> tuple[ssl.SSLContext, str] | None:
    """The client TLS context of ``dicomnode echo``: ``--tls auto`` speaks TLS when the node's own
    settings have a certificate (so the node's health check works on a TLS-only port) and then
    presents that certificate; ``--cert``/``--key`` present another one; with ``--ca`` the node's
    certificate is verified, without it only the channel is encrypted (a liveness check)."""
    s = _settings(args)
    if args.tls == "off" or (args.tls == "auto" and s.tls_cert is None):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.ca:
        ctx.load_verify_locations(cafile=args.ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    cert, key = args.cert or s.tls_cert, args.key or s.tls_key
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    return ctx, args.host


def cmd_echo(args: argparse.Namespace) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at runtime, not in the stub

    try:
        tls = _echo_tls(args)
    except (OSError, ssl.SSLError) as exc:
        print(f"C-ECHO: cannot set up TLS: {exc}", file=sys.stderr)
        return 2
    ae = AE(ae_title=args.calling_ae)
    ae.acse_timeout = ae.network_timeout = args.timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae, tls_args=tls)
    if not assoc.is_established:
        over = " over TLS" if tls else ""
        print(f"C-ECHO: no association with {args.called_ae}@{args.host}:{args.port}{over}", file=sys.stderr)
        return 1
    try:
        rsp = assoc.send_c_echo()
        ok = rsp is not None and int(rsp.Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()
    print("C-ECHO: success" if ok else "C-ECHO: failed")
    return 0 if ok else 1


def cmd_results(args: argparse.Namespace) -> int:
    from dicomnode.store.db import Store
    from dicomnode.store.queries import result_rows

    s = _settings(args)
    store = Store(s.effective_database_url)
    try:
        rows = result_rows(store, limit=args.limit)
    finally:
        store.dispose()
    if args.format == "json":
        print(
            json.dumps(
                [r.__dict__ | {"seconds_to_result": r.seconds_to_result} for r in rows], default=str, indent=1
            )
        )
        return 0
    print(f"{'study UID':<64} {'state':<16} {'score':>6} {'priority':<8} {'model':<24} {'s-to-result':>11}")
    for r in rows:
        score = f"{r.score:.3f}" if r.score is not None else "-"
        ttr = f"{r.seconds_to_result:.2f}" if r.seconds_to_result is not None else "-"
        print(
            f"{r.study_uid:<64} {r.state:<16} {score:>6} {r.priority or '-':<8} {r.model_version or '-':<24} {ttr:>11}"
        )
    return 0


def cmd_worklist(args: argparse.Namespace) -> int:
    from datetime import datetime, timedelta, timezone

    from dicomnode.delivery.push import expand
    from dicomnode.ops.worklist import entries_from_srs, entries_from_store, render
    from dicomnode.results import reading_order

    if args.sr_dir:
        entries, skipped = entries_from_srs(expand([Path(args.sr_dir)]))
        for line in skipped:
            print(f"skipped {line}", file=sys.stderr)
    else:
        from dicomnode.store.db import Store

        store = Store(_settings(args).effective_database_url)
        try:
            entries = entries_from_store(store)
        finally:
            store.dispose()
    ranked = reading_order(entries, now=datetime.now(timezone.utc), max_wait=timedelta(minutes=args.max_wait))
    print(render(ranked, args.format))
    return 0


def cmd_resend(args: argparse.Namespace) -> int:
    from dicomnode.store.db import Store
    from dicomnode.store.models import StudyState
    from dicomnode.store.queries import studies_in_state

    s = _settings(args)
    configure_logging(s.log_level, s.log_format)
    if not s.destinations:
        raise ConfigError("nothing to re-send to: set DICOMNODE_DESTINATIONS, e.g. PACS@10.0.0.5:104")
    from worker.pipeline import resend

    store = Store(s.effective_database_url)
    uids = list(args.study_uids)
    if args.failed:
        uids += [uid for uid, _ in studies_in_state(store, StudyState.DELIVERY_FAILED)]
    if not uids:
        print("no study to re-send (give study UIDs or --failed)")
        return 0
    worst = 0
    for uid in uids:
        state = resend(s, store, uid)
        print(f"{uid}: {state.value}")
        worst = max(worst, 0 if state is StudyState.DELIVERED else 1)
    return worst


def cmd_migrate(args: argparse.Namespace) -> int:
    from dicomnode.store.db import downgrade, migrate

    s = _settings(args)
    if args.downgrade:
        downgrade(s.effective_database_url, args.downgrade)
    else:
        migrate(s.effective_database_url, args.revision)
    print(f"database at revision {args.downgrade or args.revision}")
    return 0


def _time_arg(text: str | None, *, end: bool = False) -> datetime | None:
    from dicomnode.ops.audit import parse_time

    if text is None:
        return None
    try:
        return parse_time(text, end=end)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_audit(args: argparse.Namespace) -> int:
    from dicomnode.ops import audit
    from dicomnode.ops.tables import render_rows
    from dicomnode.store.db import Store

    states = tuple(x.strip().lower() for x in (args.state or "").split(",") if x.strip())
    try:
        f = audit.AuditFilter(
            since=_time_arg(args.since),
            until=_time_arg(args.until, end=True),
            calling_ae=args.calling_ae,
            states=states,
            model_version=args.model_version,
            failed_deliveries=args.failed_deliveries,
            study_uid=args.study,
            accession_number=args.accession,
        )
    except ValueError as exc:
        raise ConfigError(f"dicomnode audit: {exc}") from None
    limit = args.limit or None
    store = Store(_settings(args).effective_database_url)
    try:
        rows: list[Any]
        columns: list[str] | None = None
        if args.what == "studies":
            rows = audit.studies(store, f, limit=limit)
            columns = [
                "first_received_at", "study_uid", "calling_ae", "state", "model_version", "score",
                "priority", "failed_attempts", "seconds_to_result",
            ]  # fmt: skip
        elif args.what == "summary":
            rows = audit.summary(store, f, by=args.by)
        elif args.what == "deliveries":
            rows = audit.deliveries(store, f, failed_only=not args.all, limit=limit)
            columns = ["attempted_at", "study_uid", "destination", "attempt", "success", "status", "error"]
        else:
            rows = audit.events(store, f, kind=args.kind, limit=limit)
    finally:
        store.dispose()
    print(render_rows(rows, args.format, columns=columns))
    return 0


def cmd_import_truth(args: argparse.Namespace) -> int:
    from dicomnode.ops.groundtruth import GroundTruthError, import_ground_truth
    from dicomnode.store.db import Store

    store = Store(_settings(args).effective_database_url)
    try:
        report = import_ground_truth(store, Path(args.csv), dry_run=args.dry_run)
    except GroundTruthError as exc:
        print(f"dicomnode import-truth: {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    verb = "would import" if args.dry_run else "imported"
    print(
        f"{report.rows} reads: {verb} {report.imported}, updated {report.updated}, "
        f"unchanged {report.unchanged}, {len(report.unmatched)} of studies this node never received"
    )
    for line in report.unmatched[:10]:
        print(f"  not received: {line}")
    if len(report.unmatched) > 10:
        print(f"  ... and {len(report.unmatched) - 10} more")
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from dicomnode.ops.drift import BASELINE_CARD_KEY, Baseline, baseline_from_card, load_baseline, monitor
    from dicomnode.ops.report import performance_text, write_report
    from dicomnode.ops.tables import render_rows
    from dicomnode.store.db import Store

    s = _settings(args)
    baselines: dict[str, Baseline] = {}
    models = [Path(m) for m in args.model] or ([s.model_path] if s.model_path.is_file() else [])
    for path in models:
        from dicomnode.model.modelfile import read_card

        try:
            card = read_card(path)
            base = baseline_from_card(card)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"--model {path}: {exc}") from None
        if base is not None:
            baselines[card.version] = base
        else:
            print(
                f"note: model card of {card.version} has no metrics[{BASELINE_CARD_KEY!r}]; "
                "PSI needs --baseline FILE for it",
                file=sys.stderr,
            )
    default = None
    if args.baseline:
        try:
            default = load_baseline(Path(args.baseline))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--baseline {args.baseline}: {exc}") from None
    store = Store(s.effective_database_url)
    try:
        result = monitor(
            store,
            baselines,
            _time_arg(args.since),
            _time_arg(args.until, end=True),
            args.model_version,
            default=default,
        )
    finally:
        store.dispose()
    if args.format == "json":
        from dicomnode.ops.tables import row_dicts

        doc = {
            "drift": row_dicts(result.drift),
            "daily_psi": row_dicts(result.daily),
            "performance": row_dicts(result.performance),
        }
        print(json.dumps(doc, indent=1))
    else:
        print("score drift (PSI against the validation baseline)")
        print(render_rows(result.drift, "table"))
        print("\nagainst radiologists' reads (95% Wilson intervals)")
        print(render_rows(performance_text(result.performance), "table"))
    if args.report:
        path = write_report(result, Path(args.report))
        print(f"report: {path} (and report.md)", file=sys.stderr)
    return 0


def cmd_train(argv: list[str]) -> int:
    """`dicomnode train ARGS` runs `python -m training train ARGS`; `dicomnode train
    {quantize,phantoms,card,demo-model} ARGS` the other training commands."""
    from training.__main__ import COMMANDS
    from training.__main__ import main as training_main

    if not argv or argv[0] not in COMMANDS:
        argv = ["train", *argv]
    return training_main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicomnode", description=__doc__)
    p.add_argument("--config", help="TOML settings file (or DICOMNODE_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)
    # listed for --help only: main() forwards `train ...` before argparse sees its options
    sub.add_parser(
        "train",
        add_help=False,
        help="train / quantize / report a model (python -m training; `dicomnode train --help`)",
    )

    sp = sub.add_parser(
        "serve", help="run the node: SCP, tracker, and in-process analysis unless a broker is set"
    )
    sp.add_argument("--storage-dir")
    sp.add_argument("--port", type=int)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("worker", help="run a Celery worker for DICOMNODE_BROKER_URL")
    sp.add_argument("--concurrency", type=int, default=1, help="worker processes (one ONNX session each)")
    sp.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    sp.add_argument("--hostname", help="Celery node name, e.g. gpu1@%%h")
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser("demo", help="embedded demo: node + synthetic studies + local PACS, prints results")
    sp.add_argument("--storage-dir")
    sp.add_argument("--port", type=int)
    sp.add_argument("--studies", type=int, default=6)
    sp.add_argument("--seed", type=int, default=16, help="phantom patients to send (new UIDs each run)")
    sp.add_argument("--quiet", type=float, default=2.0, help="quiet period in seconds for the demo")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("push", help="C-STORE files or folders to a DICOM node")
    sp.add_argument("paths", nargs="+")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=11112)
    sp.add_argument("--called-ae", default="DICOMNODE")
    sp.add_argument("--calling-ae", default="DICOMNODE-SCU")
    sp.set_defaults(func=cmd_push)

    sp = sub.add_parser("echo", help="C-ECHO a DICOM node (health check)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=11112)
    sp.add_argument("--called-ae", default="DICOMNODE")
    sp.add_argument("--calling-ae", default="ECHOSCU")
    sp.add_argument("--timeout", type=float, default=10)
    sp.add_argument(
        "--tls",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto: TLS when DICOMNODE_TLS_CERT is set (the node's own health check)",
    )
    sp.add_argument("--cert", help="client certificate (PEM); default DICOMNODE_TLS_CERT")
    sp.add_argument("--key", help="its private key; default DICOMNODE_TLS_KEY")
    sp.add_argument("--ca", help="verify the node's certificate against this CA bundle")
    sp.set_defaults(func=cmd_echo)

    sp = sub.add_parser("results", help="studies and their latest analysis, from SQL")
    sp.add_argument("--storage-dir")
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--format", choices=["table", "json"], default="table")
    sp.set_defaults(func=cmd_results)

    sp = sub.add_parser("worklist", help="reading order: urgent first, then by arrival; long waits raised")
    sp.add_argument("--sr-dir", help="read result SRs from this folder instead of the node's SQL")
    sp.add_argument("--storage-dir")
    sp.add_argument(
        "--max-wait",
        type=float,
        default=240,
        help="minutes after which a routine study joins the urgent band",
    )
    sp.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sp.set_defaults(func=cmd_worklist)

    sp = sub.add_parser(
        "resend", help="deliver results again (e.g. after a PACS outage outlasted the retries)"
    )
    sp.add_argument("study_uids", nargs="*")
    sp.add_argument("--failed", action="store_true", help="every study whose delivery failed")
    sp.add_argument("--storage-dir")
    sp.set_defaults(func=cmd_resend)

    sp = sub.add_parser(
        "migrate", help="bring the database schema up to date (the node also does this at start)"
    )
    sp.add_argument("--storage-dir")
    sp.add_argument("--revision", default="head")
    sp.add_argument("--downgrade", metavar="REVISION")
    sp.set_defaults(func=cmd_migrate)

    sp = sub.add_parser(
        "audit",
        help="who sent what, what the model said, what was delivered: studies, summary, deliveries, events",
        description="Audit questions over the node's SQL record. Times are UTC; --since/--until take "
        "a date (2026-01-31), a date-time, or a span back from now (24h, 7d).",
    )
    sp.add_argument(
        "what",
        nargs="?",
        default="studies",
        choices=["studies", "summary", "deliveries", "events"],
        help="studies (default): each with its latest analysis; summary: counts per --by; "
        "deliveries: C-STORE attempts of results (failed ones unless --all); events: the event log",
    )
    sp.add_argument("--storage-dir")
    sp.add_argument("--since", help="from this time on (first received / attempted / logged)")
    sp.add_argument("--until", help="before this time; a bare date includes that day")
    sp.add_argument("--calling-ae", help="studies sent by this AE title")
    sp.add_argument("--state", help="study states (outcome), comma-separated, e.g. delivered,delivery_failed")
    sp.add_argument("--model-version", help="studies whose latest analysis ran this model version")
    sp.add_argument(
        "--failed-deliveries", action="store_true", help="studies with at least one failed delivery attempt"
    )
    sp.add_argument("--study", help="one Study Instance UID (events: its timeline)")
    sp.add_argument("--accession", help="one accession number")
    sp.add_argument(
        "--by", default="day", choices=["day", "calling_ae", "state", "model_version", "priority"]
    )
    sp.add_argument("--kind", help="events of this kind only, e.g. study.delivery_failed")
    sp.add_argument("--all", action="store_true", help="deliveries: successful attempts too")
    sp.add_argument("--limit", type=int, default=100, help="at most this many rows (0: all)")
    sp.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sp.set_defaults(func=cmd_audit)

    sp = sub.add_parser(
        "import-truth",
        help="import radiologists' reads (CSV: study_uid or accession_number, label 0/1, reader, read_at)",
    )
    sp.add_argument("csv")
    sp.add_argument("--storage-dir")
    sp.add_argument("--dry-run", action="store_true", help="check and match every line, import nothing")
    sp.set_defaults(func=cmd_import_truth)

    sp = sub.add_parser(
        "monitor",
        help="model performance: score drift (PSI) against the validation baseline, and "
        "sensitivity/specificity/PPV/NPV against imported reads",
    )
    sp.add_argument("--storage-dir")
    sp.add_argument("--since", help="analyses finished from this time on (date, date-time, or 7d)")
    sp.add_argument("--until", help="analyses finished before this time; a bare date includes that day")
    sp.add_argument("--model-version", help="only this model version")
    sp.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ONNX",
        help="model file(s) whose card holds a validation score histogram (default: DICOMNODE_MODEL)",
    )
    sp.add_argument(
        "--baseline",
        metavar="FILE",
        help='validation scores for versions without one in their card: JSON {"edges","counts"} or '
        '{"scores"}, or one score per line',
    )
    sp.add_argument("--report", metavar="DIR", help="also write DIR/report.html and DIR/report.md with plots")
    sp.add_argument("--format", choices=["table", "json"], default="table")
    sp.set_defaults(func=cmd_monitor)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # everything after `train` belongs to the training CLI
        return cmd_train(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"dicomnode: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
