"""Withdraw a model version's results at the PACS: `dicomnode retract --model-version X`.

For every study the version delivered results for, the node sends an IHE IOCM rejection note (a
Key Object Selection Document titled "Rejected for Patient Safety Reasons", (113037, DCM))
referencing that version's SRs and heatmaps, to each destination that accepted them. Each send is
an event: `dicomnode audit events --kind results.retracted` (or `results.retract_failed`). An
IOCM-aware PACS hides the rejected objects; others store the note beside them (docs/models.md,
"Withdraw a version"). Install another model first, or the version keeps analysing new studies.

Exit status: 0 when every note was accepted (or none was due), 1 when one was not, 2 for a usage
error (no such version in this node's record: `dicomnode audit summary --by model_version`).
"""

from __future__ import annotations

import argparse

from dicomnode.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError
from dicomnode.cli.settings import settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``retract`` on the ``dicomnode`` subparsers."""
    sp = sub.add_parser(
        "retract",
        help="withdraw a model version's results at the PACS (IOCM rejection note per study)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("--model-version", required=True, help="the version whose results to withdraw")
    sp.add_argument("--dry-run", action="store_true", help="list the studies and destinations, send nothing")
    sp.add_argument("--storage-dir")
    sp.set_defaults(func=cmd_retract)


def cmd_retract(args: argparse.Namespace) -> int:
    """Send the rejection notes; one line per study and destination."""
    from sqlalchemy import func, select

    from dicomnode.cli.database import open_existing_store
    from dicomnode.delivery.retract import retract_version
    from dicomnode.store.models import Analysis

    s = settings(args)
    store = open_existing_store(s)
    try:
        with store.session() as session:
            analyses = session.scalar(
                select(func.count(Analysis.id)).where(Analysis.model_version == args.model_version)
            )
        if not analyses:
            raise CommandError(
                f"no analysis by model version {args.model_version!r} in this node's record; "
                "`dicomnode audit summary --by model_version` lists the versions",
                EXIT_USAGE,
            )
        done = retract_version(s, store, args.model_version, dry_run=args.dry_run)
    finally:
        store.dispose()
    if not done:
        print(f"{analyses} analyses by {args.model_version}, none delivered: nothing to retract")
        return EXIT_OK
    worst = EXIT_OK
    for r in done:
        if args.dry_run:
            print(f"{r.study_uid} -> {r.destination}: would reject {len(r.rejected)} objects")
        elif r.success:
            note = r.note_sop_instance_uid
            print(f"{r.study_uid} -> {r.destination}: rejected {len(r.rejected)} objects (note {note})")
        else:
            print(f"{r.study_uid} -> {r.destination}: NOT retracted: {r.error}")
            worst = EXIT_FAILED
    return worst
