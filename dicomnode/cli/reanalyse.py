"""Put studies back for analysis: `dicomnode reanalyse STUDY_UID ...` or by query (`--state failed
--since 7d`), e.g. after a model fix, a failed analysis or a study that arrived incomplete.

Each study goes back to `complete` in SQL, the state a study is in when its quiet period has ended
and it waits for analysis; the event log gets `study.complete` (reason "reanalyse requested") and
`study.reanalyse_requested` (the state it left). Then:

- with DICOMNODE_BROKER_URL set, this command also puts the analysis task on the queue: a worker
  analyses the study now;
- without a broker (embedded), the node analyses it: the running node's reconciler hands on a
  `complete` study whose last hand-off is older than DICOMNODE_RECONCILE_AFTER_SECONDS (so within
  about two minutes by default), and every start queues them again.

Only finished studies (analysed, delivered, delivery_failed, not_applicable, failed) are put back;
one still receiving, complete or analysing is on its way already and left alone. The new analysis
is a new row: `dicomnode audit events --study UID` shows both. With the same model version the
results keep their UIDs, so the PACS ends up with one SR and one SC, not two of each.

Exit status: 0 when every study given is queued or already on its way, 1 when one is unknown to
this node or could not be queued, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from dicomnode.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError
from dicomnode.cli.settings import settings
from dicomnode.config import Settings

if TYPE_CHECKING:  # imported when run: `dicomnode --help` need not load SQLAlchemy
    from dicomnode.store.db import Store


def _matching(store: Store, args: argparse.Namespace) -> list[str]:
    """Study UIDs matching ``--state`` and its narrowing options (:mod:`dicomnode.ops.audit`)."""
    from dicomnode.cli.ops import _time_arg
    from dicomnode.ops.audit import AuditFilter, studies

    states = tuple(x.strip().lower() for x in args.state.split(",") if x.strip())
    try:
        f = AuditFilter(
            since=_time_arg(args.since),
            until=_time_arg(args.until, end=True),
            calling_ae=args.calling_ae,
            states=states,
            model_version=args.model_version,
        )
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    return [r.study_uid for r in studies(store, f, limit=None)]


def cmd_reanalyse(args: argparse.Namespace) -> int:
    """Put the studies given (or matching ``--state``) back for analysis; print one line each."""
    narrowing = [o for o in ("since", "until", "calling_ae", "model_version") if getattr(args, o)]
    if narrowing and not args.state:
        flag = "--" + narrowing[0].replace("_", "-")
        raise CommandError(f"{flag} narrows --state: add --state, e.g. --state failed", EXIT_USAGE)
    if not args.study_uids and not args.state:
        raise CommandError(
            "give the Study Instance UIDs to analyse again, or --state (e.g. --state failed --since 7d)",
            EXIT_USAGE,
        )
    from dicomnode.cli.database import open_existing_store
    from dicomnode.store.queries import study_state
    from dicomnode.store.records import REANALYSABLE, request_reanalysis

    s = settings(args)
    store = open_existing_store(s)
    try:
        uids = list(dict.fromkeys([*args.study_uids, *(_matching(store, args) if args.state else [])]))
        if not uids:
            print("no study matches")
            return EXIT_OK
        worst = EXIT_OK
        queued = []
        for uid in uids:
            if args.dry_run:
                state = study_state(store, uid)
                ok = state in REANALYSABLE
                print(
                    f"{uid}: {state.value if state else 'unknown'}: {'would queue' if ok else 'would skip'}"
                )
                worst = max(worst, EXIT_OK if state else EXIT_FAILED)
                continue
            moved, before = request_reanalysis(store, uid)
            if moved:
                queued.append(uid)
                print(f"{uid}: queued (was {before.value if before else '?'})")
            elif before is None:
                print(f"{uid}: unknown: this node never received it", file=sys.stderr)
                worst = EXIT_FAILED
            else:
                print(f"{uid}: left alone, already on its way ({before.value})")
        if queued and not args.dry_run:
            worst = max(worst, _dispatch(s, store, queued))
        return worst
    finally:
        store.dispose()


def _dispatch(s: Settings, store: Store, uids: list[str]) -> int:
    """With a broker, the analysis tasks go on the queue now, published from here (and the studies
    stamped as handed on, so the node's reconciler does not send them a second time); without one
    the node picks the studies up. Either way they are `complete` in SQL already: nothing is lost
    if publishing fails."""
    if not s.broker_url:
        print(
            f"{len(uids)} studies queued in SQL: the running node analyses them (its reconciler, "
            "within DICOMNODE_RECONCILE_AFTER_SECONDS, or its next start)"
        )
        return EXIT_OK
    from dicomnode.store.models import utcnow
    from dicomnode.store.records import stamp_claimed
    from worker.app import make_celery

    app = make_celery(s)
    wait = s.publish_timeout_seconds
    app.conf.broker_connection_timeout = wait
    app.conf.broker_transport_options = dict(socket_connect_timeout=wait, socket_timeout=wait)
    policy = {"max_retries": 2, "interval_start": 0, "interval_step": wait / 4, "interval_max": wait / 4}
    try:
        for uid in uids:
            queued_at = utcnow()
            app.send_task(
                "dicomnode.analyse_study",
                args=[uid, queued_at.isoformat()],
                queue=s.queue,
                retry=True,
                retry_policy=policy,
            )
            stamp_claimed(store, uid)
    except Exception as exc:  # kombu's and redis's own errors, or OSError, when the broker is away
        print(
            f"could not put the tasks on the broker ({exc.__class__.__name__}): the studies stay "
            "`complete` in SQL and the node's reconciler sends them; check DICOMNODE_BROKER_URL",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"{len(uids)} studies sent to queue {s.queue!r}")
    return EXIT_OK


__all__ = ["cmd_reanalyse"]
