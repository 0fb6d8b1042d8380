"""Commands that run or reach a node: serve, worker, demo, push, echo, migrate."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dicomnode.cli.errors import EXIT_FAILED, EXIT_USAGE, CommandError
from dicomnode.cli.settings import settings
from dicomnode.config import ConfigError, Settings
from dicomnode.logconfig import configure_logging

if TYPE_CHECKING:
    from dicomnode.ops.purge import PurgeSchedule


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the node (SCP, tracker, analysis; ``/metrics`` and the web page when their ports are set).

    Before any start-up work (migrate, rescan): take the storage folder's lock, so a second node
    on the same folder is refused, and check that both listening addresses can be bound, so a port
    in use or a wrong host ends in one line instead of a traceback after the rescan."""
    from dicomnode.cli.listen_check import check_listen, listen_error
    from dicomnode.cli.web import WEB_PAGE, start_page
    from dicomnode.node import Node
    from dicomnode.storage.lock import StorageLockedError, lock_storage
    from dicomnode.store.db import Store
    from worker.runners import make_runner

    s = settings(args)
    configure_logging(s.log_level, s.log_format)
    try:
        lock = lock_storage(s.storage_dir)
    except StorageLockedError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    with lock:
        dicom = dict(what="DICOM listener", host_key="DICOMNODE_HOST", port_key="DICOMNODE_PORT")
        web = dict(
            what="/metrics server", host_key="DICOMNODE_METRICS_HOST", port_key="DICOMNODE_METRICS_PORT"
        )
        check_listen(s.host, s.port, **dicom)  # port 0 (any free one) still checks the host
        if s.metrics_port:
            check_listen(s.metrics_host, s.metrics_port, **web)
        if s.web_port:
            check_listen(s.web_host, s.web_port, **WEB_PAGE)
        metrics = store = None
        if s.metrics_port:  # one /metrics for the node and every worker: it reads the shared SQL
            from dicomnode.ops.metrics import start_metrics_server

            store = Store(s.effective_database_url)
            try:
                metrics = start_metrics_server(s, store)
            except OSError as exc:  # taken between the check and now
                store.dispose()
                raise listen_error(exc, s.metrics_host, s.metrics_port, **web) or exc from None
        # the web worklist (dicomnode.web) on a store of its own, like /metrics
        page = start_page(s, Store(s.effective_database_url)) if s.web_port else None
        node = Node(s, make_runner)
        schedule = _purge_schedule(s)  # retention (dicomnode.ops.purge), when set
        try:
            node.serve_forever()
        except OSError as exc:
            err = listen_error(exc, s.host, s.port, **dicom)
            if err is None:
                raise
            node.stop(wait=False)
            raise err from None
        finally:
            if schedule is not None:
                schedule.stop()
            if page is not None:
                page.stop()
            if metrics is not None and store is not None:
                metrics.stop()
                store.dispose()
    return 0


def _purge_schedule(s: Settings) -> PurgeSchedule | None:
    """The retention schedule ``serve`` runs on its own store, started; None when retention is off."""
    from dicomnode.ops.purge import PurgeSchedule
    from dicomnode.store.db import Store

    if not PurgeSchedule.wanted(s):
        return None
    return PurgeSchedule.for_settings(s, Store(s.effective_database_url), own_store=True).start()


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a Celery worker on ``DICOMNODE_QUEUE`` after checking the model loads."""
    s = settings(args)
    if not s.broker_url:
        raise ConfigError("dicomnode worker needs DICOMNODE_BROKER_URL, e.g. redis://127.0.0.1:6379/0")
    configure_logging(s.log_level, s.log_format)
    if args.config:
        # The tasks build their settings in the worker processes from the environment
        # (worker.tasks.get_pipeline): hand the file on, or they would run on the defaults.
        os.environ["DICOMNODE_CONFIG"] = str(Path(args.config).resolve())
    from dicomnode.model.session import PneumoniaModel
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
    """The embedded demo (:mod:`dicomnode.cli.demo`); exit 1 when a study got no score."""
    from dicomnode.cli.demo import run_demo

    s = settings(args)
    if "DICOMNODE_PORT" not in os.environ and args.port is None:
        s = s.with_overrides(port=0)
    s = s.with_overrides(quiet_seconds=args.quiet)
    configure_logging("warning", s.log_format)
    from dicomnode.storage.lock import StorageLockedError, lock_storage

    try:
        lock = lock_storage(s.storage_dir)
    except StorageLockedError as exc:
        raise CommandError(f"{exc}; or give the demo its own --storage-dir", EXIT_USAGE) from None
    with lock:
        rows = run_demo(s, studies=args.studies, seed=args.seed)
    return 0 if all(r.score is not None for r in rows) else 1


class _PeerErrors(logging.Handler):
    """pynetdicom's error lines while we talk to a peer: they say why an association failed
    ("Reason: Calling AE title not recognised", "TCP Initialisation Error: ... refused"). Kept
    for our one-line message instead of printed as they come (Python's last-resort handler)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []
        self._propagate = True

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> _PeerErrors:
        logger = logging.getLogger("pynetdicom")
        self._propagate = logger.propagate
        logger.addHandler(self)
        logger.propagate = False  # said once, in our line, not also by a handler further up
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("pynetdicom")
        logger.removeHandler(self)
        logger.propagate = self._propagate


def association_error(peer: str, lines: list[str], calling_ae: str) -> str:
    """Why an association with ``peer`` failed and what to do, from pynetdicom's error lines."""
    said = {k: v for k, _, v in (ln.partition(": ") for ln in lines) if v}
    reason = said.get("Reason")
    if reason is not None:
        if "Calling AE" in reason:
            fix = (
                f"allow our calling AE {calling_ae!r} there (DICOMNODE_ALLOWED_CALLING_AES on a dicomnode), "
                "or send with an allowed --calling-ae"
            )
        elif "Called AE" in reason:
            fix = "set --called-ae to the peer's AE title (DICOMNODE_AE_TITLE on a dicomnode)"
        else:
            fix = "try again later, or see the peer's log"
        result = said.get("Result", "rejected")
        return f"{peer} refused the association: {reason} ({result}); {fix}"
    if "TCP Initialisation Error" in said:
        return (
            f"cannot connect to {peer} ({said['TCP Initialisation Error']}); is the node running and "
            "listening there? check --host and --port"
        )
    detail = "; ".join(lines[-2:]) or "no answer"
    return f"no association with {peer} ({detail}); check --host, --port and --called-ae, and the peer's log"


def _status_text(status: int | None) -> str:
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    if status is None:
        return "not sent"
    category, text = STORAGE_SERVICE_CLASS_STATUS.get(status, ("Failure", "unknown status"))
    return f"0x{status:04X} {category}: {text}"


def cmd_push(args: argparse.Namespace) -> int:
    """C-STORE files and folders to a DICOM node; exit 1 unless every file was stored."""
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_file_meta_info

    from dicomnode.delivery.push import expand, push_files

    given = expand([Path(p) for p in args.paths])
    missing = [p for p in given if not p.exists()]
    if missing:
        raise CommandError(f"{missing[0]}: no such file or folder", EXIT_USAGE)
    files = []
    for f in given:  # a folder may hold a README or a DICOMDIR's neighbours: say so, send the rest
        try:
            read_file_meta_info(f)
            files.append(f)
        except (InvalidDicomError, OSError) as exc:
            print(f"{f}: skipped, not a DICOM Part 10 file ({exc.__class__.__name__})", file=sys.stderr)
    if not files:
        raise CommandError("no DICOM files to send in " + ", ".join(args.paths), EXIT_USAGE)
    peer = f"{args.called_ae}@{args.host}:{args.port}"
    with _PeerErrors() as errors:
        try:
            res = push_files(
                files, args.host, args.port, called_ae=args.called_ae, calling_ae=args.calling_ae
            )
        except ConnectionError:
            raise CommandError(association_error(peer, errors.lines, args.calling_ae), EXIT_FAILED) from None
        except ValueError as exc:  # more kinds of file than one association can carry
            raise CommandError(str(exc), EXIT_USAGE) from None
    ok = sum(r.status == 0 for r in res)
    for r in res:
        if r.status != 0:
            print(f"{r.path}: {_status_text(r.status)} {r.error or ''}".rstrip())
    print(f"{ok}/{len(given)} stored")
    if ok < len(given):
        print(
            f"dicomnode push: {len(given) - ok} of {len(given)} files not stored by {peer} (statuses "
            "above); its log says why",
            file=sys.stderr,
        )
    return 0 if ok == len(given) else EXIT_FAILED


def _echo_tls(args: argparse.Namespace) -> tuple[ssl.SSLContext, str] | None:
    """The client TLS context of ``dicomnode echo``: ``--tls auto`` speaks TLS when the node's own
    settings have a certificate (so the node's health check works on a TLS-only port) and then
    presents that certificate; ``--cert``/``--key`` present another one; with ``--ca`` the node's
    certificate is verified, without it only the channel is encrypted (a liveness check)."""
    s = settings(args)
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
    """C-ECHO a DICOM node (the health check); exit 1 when it does not answer Success."""
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


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade (or ``--downgrade``) the database schema."""
    from dicomnode.store.db import downgrade, migrate

    s = settings(args)
    if args.downgrade:
        downgrade(s.effective_database_url, args.downgrade)
    else:
        migrate(s.effective_database_url, args.revision)
    print(f"database at revision {args.downgrade or args.revision}")
    return 0
