"""Commands that run or reach a node: serve, worker, demo, push, echo, migrate."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path

from dicomnode.cli.settings import settings
from dicomnode.config import ConfigError
from dicomnode.logconfig import configure_logging


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the node (SCP, tracker, analysis; ``/metrics`` when its port is set)."""
    from dicomnode.node import Node
    from worker.runners import make_runner

    s = settings(args)
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
    rows = run_demo(s, studies=args.studies, seed=args.seed)
    return 0 if all(r.score is not None for r in rows) else 1


def cmd_push(args: argparse.Namespace) -> int:
    """C-STORE files and folders to a DICOM node; exit 1 unless every file was stored."""
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
