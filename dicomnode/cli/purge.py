"""Delete received instances and result files retention allows: `dicomnode purge`.

Instances go N days after their study's results were delivered (``--instances-days``, default
DICOMNODE_RETENTION_INSTANCE_DAYS), result files M days after they were built
(``--results-days``, default DICOMNODE_RETENTION_RESULT_DAYS); 0 keeps them. The SQL rows stay,
marked purged, with a ``study.purged`` / ``results.purged`` event each (``dicomnode audit events
--kind study.purged``). ``serve`` does the same every DICOMNODE_PURGE_INTERVAL_SECONDS.

Exit status: 0 when everything due was deleted, 1 when a file could not be (the log names it; it
is tried again next time), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json

from dicomnode.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError
from dicomnode.cli.settings import settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``purge`` on the ``dicomnode`` subparsers."""
    sp = sub.add_parser(
        "purge",
        help="delete received instances and result files past their retention (rows kept, marked purged)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("--instances-days", type=float, help="days after delivery; default the setting")
    sp.add_argument(
        "--results-days", type=float, help="days after the results were built; default the setting"
    )
    sp.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    sp.add_argument("--format", choices=["table", "json"], default="table")
    sp.add_argument("--storage-dir")
    sp.set_defaults(func=cmd_purge)


def cmd_purge(args: argparse.Namespace) -> int:
    """Purge once and print what went."""
    from dicomnode.cli.database import open_existing_store
    from dicomnode.ops.purge import purge

    for flag, value in (("--instances-days", args.instances_days), ("--results-days", args.results_days)):
        if value is not None and value < 0:
            raise CommandError(f"{flag} {value}: use days >= 0 (0 keeps the files)", EXIT_USAGE)
    s = settings(args)
    instance_days = s.retention_instance_days if args.instances_days is None else args.instances_days
    result_days = s.retention_result_days if args.results_days is None else args.results_days
    if instance_days <= 0 and result_days <= 0:
        raise CommandError(
            "nothing to purge: retention is off; set DICOMNODE_RETENTION_INSTANCE_DAYS / "
            "DICOMNODE_RETENTION_RESULT_DAYS or pass --instances-days / --results-days",
            EXIT_USAGE,
        )
    store = open_existing_store(s)
    try:
        report = purge(s, store, instance_days=instance_days, result_days=result_days, dry_run=args.dry_run)
    finally:
        store.dispose()
    if args.format == "json":
        print(json.dumps(report.__dict__))
    else:
        verb = "would purge" if report.dry_run else "purged"
        print(
            f"{verb} {report.instances} instance file(s) of {report.studies} stud(ies) "
            f"({report.instance_bytes} bytes) and the results of {report.analyses} analysis(es) "
            f"({report.result_files} file(s)) in {report.seconds:.1f} s"
        )
        if report.failed:
            print(f"{report.failed} file(s) could not be deleted: see the purge.delete_failed log lines")
    return EXIT_FAILED if report.failed else EXIT_OK
