"""Commands over the node's record (:mod:`dicomnode.ops`): audit, import-truth, monitor."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from dicomnode.cli.settings import settings
from dicomnode.config import ConfigError


def _time_arg(text: str | None, *, end: bool = False) -> datetime | None:
    from dicomnode.ops.audit import parse_time

    if text is None:
        return None
    try:
        return parse_time(text, end=end)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_audit(args: argparse.Namespace) -> int:
    """Print one audit question (:mod:`dicomnode.ops.audit`) as a table, CSV or JSON."""
    from dicomnode.cli.database import open_existing_store
    from dicomnode.ops import audit
    from dicomnode.ops.tables import render_rows

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
    store = open_existing_store(settings(args))
    try:
        rows: list[Any]
        columns: list[str] | None = None
        row_type: type = {
            "studies": audit.StudyRow,
            "summary": audit.SummaryRow,
            "deliveries": audit.DeliveryRow,
            "commitments": audit.CommitmentRow,
            "events": audit.EventRow,
        }[args.what]
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
        elif args.what == "commitments":
            rows = audit.commitments(store, f, limit=limit)
            columns = [
                "requested_at", "study_uid", "destination", "sop_instance_uid", "delivered", "committed",
                "failed_reason",
            ]  # fmt: skip
        else:
            rows = audit.events(store, f, kind=args.kind, limit=limit)
    finally:
        store.dispose()
    print(render_rows(rows, args.format, columns=columns, row_type=row_type))
    return 0


def cmd_import_truth(args: argparse.Namespace) -> int:
    """Import radiologists' reads (:mod:`dicomnode.ops.groundtruth`); exit 2 on a bad file."""
    from dicomnode.cli.database import open_existing_store
    from dicomnode.ops.groundtruth import GroundTruthError, import_ground_truth

    store = open_existing_store(settings(args))
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
    """Print drift and performance per model version (:mod:`dicomnode.ops.monitor`), and a report."""
    from dicomnode.cli.database import open_existing_store
    from dicomnode.ops.drift import BASELINE_CARD_KEY, Baseline, baseline_from_card, load_baseline
    from dicomnode.ops.monitor import monitor
    from dicomnode.ops.report import performance_text, write_report
    from dicomnode.ops.tables import render_rows

    s = settings(args)
    baselines: dict[str, Baseline] = {}
    models = [Path(m) for m in args.model] or ([s.model_path] if s.model_path.is_file() else [])
    for path in models:
        from dicomnode.model.session import read_card

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
    store = open_existing_store(s)
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
