"""Commands over the node's results: results, worklist, resend."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from dicomnode.cli.settings import settings
from dicomnode.config import ConfigError
from dicomnode.logconfig import configure_logging

if TYPE_CHECKING:
    from dicomnode.store.queries import ResultRow


def _to_result(row: ResultRow) -> float | None:
    """Seconds from the last instance to the results accepted by every destination; none for a
    study whose results were not delivered (failed delivery, not applicable, failed, no
    destination), where a time "to result" would time something that never reached a reader."""
    if row.delivered_at is None:
        return None
    return (row.delivered_at - row.last_received_at).total_seconds()


def cmd_results(args: argparse.Namespace) -> int:
    """Print studies and their latest analysis (:func:`dicomnode.store.queries.result_rows`)."""
    from dicomnode.cli.database import open_existing_store
    from dicomnode.store.queries import result_rows

    store = open_existing_store(settings(args))
    try:
        rows = result_rows(store, limit=args.limit)
    finally:
        store.dispose()
    if args.format == "json":
        print(
            json.dumps(
                [r.__dict__ | {"seconds_to_result": _to_result(r)} for r in rows], default=str, indent=1
            )
        )
        return 0
    print(f"{'study UID':<64} {'state':<16} {'score':>6} {'priority':<8} {'model':<24} {'s-to-result':>11}")
    for r in rows:
        score = f"{r.score:.3f}" if r.score is not None else "-"
        seconds = _to_result(r)
        ttr = f"{seconds:.2f}" if seconds is not None else "-"
        print(
            f"{r.study_uid:<64} {r.state:<16} {score:>6} {r.priority or '-':<8} {r.model_version or '-':<24} {ttr:>11}"
        )
    return 0


def cmd_worklist(args: argparse.Namespace) -> int:
    """Print the reading order of the node's studies, or of the result SRs in ``--sr-dir``."""
    from dicomnode.delivery.push import expand
    from dicomnode.ops.worklist import entries_from_srs, entries_from_store, render
    from dicomnode.results import reading_order

    if args.sr_dir:
        entries, skipped = entries_from_srs(expand([Path(args.sr_dir)]))
        for line in skipped:
            print(f"skipped {line}", file=sys.stderr)
    else:
        from dicomnode.cli.database import open_existing_store

        store = open_existing_store(settings(args))
        try:
            entries = entries_from_store(store)
        finally:
            store.dispose()
    ranked = reading_order(entries, now=datetime.now(timezone.utc), max_wait=timedelta(minutes=args.max_wait))
    print(render(ranked, args.format))
    return 0


def cmd_resend(args: argparse.Namespace) -> int:
    """Deliver results again (:mod:`dicomnode.delivery`); exit 1 when a study is not delivered."""
    from dicomnode.cli.database import open_existing_store
    from dicomnode.store.models import StudyState
    from dicomnode.store.queries import studies_in_state

    s = settings(args)
    configure_logging(s.log_level, s.log_format)
    if not s.destinations:
        raise ConfigError("nothing to re-send to: set DICOMNODE_DESTINATIONS, e.g. PACS@10.0.0.5:104")
    from dicomnode.delivery import resend

    store = open_existing_store(s)
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
