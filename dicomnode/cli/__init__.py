"""``dicomnode`` command line: serve, worker, demo, push, echo, results, worklist, resend, reanalyse,
migrate, audit, import-truth, monitor, web."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from dicomnode.cli import node, ops, purge, reanalyse, results, retract, training, web
from dicomnode.cli.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE, CommandError
from dicomnode.config import ConfigError

_CONFIG_HELP = "TOML settings file (or DICOMNODE_CONFIG); before or after the subcommand"

_EPILOG = """exit status: 0 done; 1 the work failed (a file not stored, a study not delivered, a peer
refused); 2 usage or set-up error (bad argument or setting, no database, port in use, storage held
by another node); 130 interrupted; 141 output pipe closed (e.g. `| head`)."""


class _SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands that also take ``--config``, so ``dicomnode results --config x.toml`` works
    like ``dicomnode --config x.toml results``. Its default is SUPPRESS: given only before the
    subcommand, the subparser leaves the value alone."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)
        if kwargs.get("add_help", True):
            parser.add_argument("--config", default=argparse.SUPPRESS, help=_CONFIG_HELP)
        return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``dicomnode`` parser; each subcommand's ``func`` is its command in a module of this package."""
    p = argparse.ArgumentParser(
        prog="dicomnode",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help=_CONFIG_HELP)
    p.register("action", "parsers", _SubParsers)
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
    sp.set_defaults(func=node.cmd_serve)

    sp = sub.add_parser("worker", help="run a Celery worker for DICOMNODE_BROKER_URL")
    sp.add_argument("--concurrency", type=int, default=1, help="worker processes (one ONNX session each)")
    sp.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    sp.add_argument("--hostname", help="Celery node name, e.g. gpu1@%%h")
    sp.set_defaults(func=node.cmd_worker)

    sp = sub.add_parser("demo", help="embedded demo: node + synthetic studies + local PACS, prints results")
    sp.add_argument("--storage-dir")
    sp.add_argument("--port", type=int)
    sp.add_argument("--studies", type=int, default=6)
    sp.add_argument("--seed", type=int, default=16, help="phantom patients to send (new UIDs each run)")
    sp.add_argument("--quiet", type=float, default=2.0, help="quiet period in seconds for the demo")
    sp.set_defaults(func=node.cmd_demo)

    sp = sub.add_parser("push", help="C-STORE files or folders to a DICOM node")
    sp.add_argument("paths", nargs="+")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=11112)
    sp.add_argument("--called-ae", default="DICOMNODE")
    sp.add_argument("--calling-ae", default="DICOMNODE-SCU")
    sp.set_defaults(func=node.cmd_push)

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
    sp.set_defaults(func=node.cmd_echo)

    sp = sub.add_parser("results", help="studies and their latest analysis, from SQL")
    sp.add_argument("--storage-dir")
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--format", choices=["table", "json"], default="table")
    sp.set_defaults(func=results.cmd_results)

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
    sp.set_defaults(func=results.cmd_worklist)

    sp = sub.add_parser(
        "resend", help="deliver results again (e.g. after a PACS outage outlasted the retries)"
    )
    sp.add_argument("study_uids", nargs="*")
    sp.add_argument("--failed", action="store_true", help="every study whose delivery failed")
    sp.add_argument("--storage-dir")
    sp.set_defaults(func=results.cmd_resend)

    sp = sub.add_parser(
        "reanalyse",
        help="analyse studies again: by Study Instance UID, or every study matching --state etc.",
        description=reanalyse.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("study_uids", nargs="*", metavar="STUDY_UID")
    sp.add_argument(
        "--state", help="every study in these states, comma-separated, e.g. failed,not_applicable"
    )
    sp.add_argument("--since", help="with --state: first received from this time on (date, date-time, 7d)")
    sp.add_argument("--until", help="with --state: first received before this time")
    sp.add_argument("--calling-ae", help="with --state: studies sent by this AE title")
    sp.add_argument("--model-version", help="with --state: studies any analysis by this version touched")
    sp.add_argument("--dry-run", action="store_true", help="list the studies, change nothing")
    sp.add_argument("--storage-dir")
    sp.set_defaults(func=reanalyse.cmd_reanalyse)

    retract.add_parser(sub)
    purge.add_parser(sub)
    web.add_parser(sub)

    sp = sub.add_parser(
        "migrate", help="bring the database schema up to date (the node also does this at start)"
    )
    sp.add_argument("--storage-dir")
    sp.add_argument("--revision", default="head")
    sp.add_argument("--downgrade", metavar="REVISION")
    sp.set_defaults(func=node.cmd_migrate)

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
        choices=["studies", "summary", "deliveries", "commitments", "events"],
        help="studies (default): each with its latest analysis; summary: counts per --by; "
        "deliveries: C-STORE attempts of results (failed ones unless --all); commitments: per result "
        "object delivered and committed (storage commitment); events: the event log",
    )
    sp.add_argument("--storage-dir")
    sp.add_argument("--since", help="from this time on (first received / attempted / logged)")
    sp.add_argument("--until", help="before this time; a bare date includes that day")
    sp.add_argument("--calling-ae", help="studies sent by this AE title")
    sp.add_argument("--state", help="study states (outcome), comma-separated, e.g. delivered,delivery_failed")
    sp.add_argument("--model-version", help="studies any analysis of which ran this model version")
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
    sp.set_defaults(func=ops.cmd_audit)

    sp = sub.add_parser(
        "import-truth",
        help="import radiologists' reads (CSV: study_uid or accession_number, label 0/1, reader, read_at)",
    )
    sp.add_argument("csv")
    sp.add_argument("--storage-dir")
    sp.add_argument("--dry-run", action="store_true", help="check and match every line, import nothing")
    sp.set_defaults(func=ops.cmd_import_truth)

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
    sp.set_defaults(func=ops.cmd_monitor)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``dicomnode ARGV``; the exit status (see ``_EPILOG``: 2 for a usage or set-up error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["train"]:  # everything after `train` belongs to the training CLI
            return training.cmd_train(argv[1:])
        args = build_parser().parse_args(argv)
        try:
            code = int(args.func(args))
        except ConfigError as exc:
            print(f"dicomnode: configuration error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except CommandError as exc:
            print(f"dicomnode {args.command}: {exc}", file=sys.stderr)
            return exc.exit_code
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at interpreter exit
        return code
    except BrokenPipeError:
        # `dicomnode results | head`: the reader has all it wanted. Python's documented way
        # (library/signal.html, "Note on SIGPIPE"): point stdout at /dev/null so the flush at exit
        # cannot fail again, and end like a process killed by SIGPIPE.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a file descriptor (captured in-process)
            pass
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("dicomnode: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


__all__ = ["build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
