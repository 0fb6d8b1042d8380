"""The node: SCP + storage + tracker + task runner, started and stopped together.

Start: sweep half-written files, migrate, re-arm or re-queue studies a previous run left behind,
listen, then re-scan disk against SQL on a thread of its own (:mod:`dicomnode.receive.rescan`: a
big storage folder never keeps the port shut). The node tells the tracker which association sent
each recorded instance and when each association ends, so a study sent over one association is
complete soon after that association is released (:mod:`dicomnode.receive.tracker`). While it runs, the reconciler
(:mod:`dicomnode.receive.reconcile`) hands on again what got stranded since (a database or broker
outage, a lost delivery round, a study held for a model). Stop (SIGTERM): stop accepting, let open associations finish
for ``shutdown_grace_seconds``, abort the rest (their unanswered instances were never claimed
stored), stop the tracker and the runner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from dicomnode.config import Settings
from dicomnode.net import Listener, ListenerConfig, server_tls_context
from dicomnode.net.association import StoreRequest
from dicomnode.net.commitment_report import CommitmentReport
from dicomnode.net.status import SUCCESS
from dicomnode.receive.fingerprint import Fingerprinter
from dicomnode.receive.handler import ReceivedInstance, StoreHandler
from dicomnode.receive.reconcile import Reconciler
from dicomnode.receive.rescan import RescanReport, rescan
from dicomnode.receive.tracker import StudyTracker
from dicomnode.storage import DIR_MODE, GroupCommit, sweep_incoming, sweep_partial_writes
from dicomnode.store.commitments import record_report
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState, utcnow
from dicomnode.store.queries import studies_awaiting_delivery, studies_in_state
from dicomnode.store.records import add_event, set_study_state, stamp_claimed

if TYPE_CHECKING:  # imported when DICOMNODE_DICOMWEB_PORT is set: uvicorn is not loaded otherwise
    from dicomnode.dicomweb import StowServer

log = structlog.get_logger("dicomnode.node")

#: Instances answered Success whose row has not committed yet, remembered with the association that
#: sent them. A row that never commits leaves its entry behind: past this many the oldest are
#: dropped, and their studies wait out the quiet period.
MAX_UNRECORDED_SENDERS = 20_000


class TaskRunner(Protocol):
    """Where the node sends complete studies: :mod:`worker.runners` has the in-process and the
    Celery runner; the node never imports them, it is handed a :data:`RunnerFactory`."""

    def submit(self, study_uid: str, queued_at: datetime) -> None:
        """Analyse a complete study (now or on a queue)."""

    def resume_delivery(self, study_uid: str, analysis_id: int) -> None:
        """After a restart: schedule the delivery round a study was waiting for, where the
        runner does not keep its schedule elsewhere (Celery keeps it in Redis)."""

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking studies; with ``wait``, finish the ones already taken (never a delivery)."""

    # Optional, used when present: ``check()`` loads the model before the node listens
    # (ConfigError naming it); ``deliver_now(study_uid, analysis_id)`` runs a delivery round the
    # reconciler found overdue; ``echo(destination)`` C-ECHOes a destination that is down;
    # ``backlog()`` the tasks waiting in the broker's queue (None: unknown).


#: Builds the node's task runner once its store is open.
RunnerFactory = Callable[[Settings, Store], TaskRunner]


class Node:
    """A running dicomnode. ``start()`` returns once the SCP listens; ``stop()`` shuts down."""

    def __init__(self, settings: Settings, runners: RunnerFactory) -> None:
        self.settings = settings
        self.store: Store | None = None
        self._runners = runners
        self.runner: TaskRunner | None = None
        self.tracker = StudyTracker(
            settings.quiet_seconds,
            self._on_study_complete,
            release_grace_seconds=settings.release_grace_seconds,
        )
        #: SOP Instance UID -> the association that sent it, until its row commits
        self._senders: dict[str, int] = {}
        self._senders_lock = threading.Lock()
        self._server: Listener | None = None
        self.fingerprinter: Fingerprinter | None = None
        self._handler: StoreHandler | None = None
        self._lock = threading.Lock()
        self.rescan_report: RescanReport | None = None  # set when the start-up re-scan ends
        self._rescan_done = threading.Event()
        self._rescan_stop = threading.Event()
        self._rescan_thread: threading.Thread | None = None
        self.reconciler: Reconciler | None = None
        self._stopped = False
        #: the STOW-RS service (DICOMNODE_DICOMWEB_PORT), None when off
        self.dicomweb: StowServer | None = None

    @property
    def incoming_dir(self) -> Path:
        """Where C-STORE data sets are received (same filesystem as storage: moved, not copied)."""
        return self.settings.storage_dir.resolve() / "incoming"

    @property
    def port(self) -> int:
        """The port the SCP listens on (the real one when configured as 0)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def start(self, *, check_model: bool = False) -> Node:
        """Migrate the store, reconcile after a restart, start tracker, reconciler and SCP.

        ``check_model`` (``serve``): have the runner load the model before the port opens, so a
        node that could not analyse refuses to start (:class:`dicomnode.config.ConfigError`)
        instead of answering Success and leaving every study complete."""
        s = self.settings
        # The re-scan looks only at files and rows older than this; newer ones are the handler's.
        started_at = time.time()
        instances_dir = s.instances_dir.resolve()
        instances_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        swept = sweep_partial_writes(instances_dir) + sweep_incoming(self.incoming_dir)
        self.store = Store(s.effective_database_url)
        self.runner = self._runners(s, self.store)
        check = getattr(self.runner, "check", None)
        if check_model and check is not None:
            try:
                check()
            except Exception:
                self.runner.shutdown(wait=False)
                self.store.dispose()
                raise
        self._recover()
        self.tracker.start()
        self.reconciler = Reconciler(
            s,
            self.store,
            pending=self.tracker.pending,
            rearm=self.tracker.touch,
            dispatch=self._dispatch,
            deliver_now=getattr(self.runner, "deliver_now", None),
            echo=getattr(self.runner, "echo", None),
            backlog=getattr(self.runner, "backlog", None),
            notify=getattr(self.runner, "notify_due", None),
        ).start()
        self._handler = StoreHandler(
            self.store,
            instances_dir,
            self._on_stored,
            duplicate_policy=s.duplicate_policy,
            fsync=s.fsync,
            max_inflated_bytes=s.max_inflated_bytes,
            group_commit=GroupCommit() if s.group_commit else None,
        ).start()
        self._server = Listener(
            ListenerConfig(
                ae_title=s.ae_title,
                allowed_calling_aes=tuple(s.allowed_calling_aes),
                max_associations=s.max_associations,
                acse_timeout=s.acse_timeout_seconds,
                dimse_timeout=s.dimse_timeout_seconds,
                network_timeout=s.network_timeout_seconds,
                max_pdu_bytes=s.max_pdu_bytes,
                max_associations_per_peer=s.max_associations_per_peer,
                max_pending_connections=s.max_pending_connections,
                tls_client_aes=tuple(s.tls_client_aes),
                early_writeback=s.fsync,
                max_dataset_bytes=s.max_dataset_bytes,
                min_free_bytes=s.min_free_bytes,
            ),
            self._on_store,
            incoming_dir=self.incoming_dir,
            ssl_context=server_tls_context(s),
            on_commitment=self._on_commitment,
            on_association_end=self._on_association_end,
        )
        self._start_dicomweb()
        self._server.start(s.host, s.port)
        listener = self._server
        self.fingerprinter = Fingerprinter(self.store, last_activity=lambda: listener.last_store).start()
        add_event(
            self.store,
            "node.started",
            ae_title=s.ae_title,
            port=self.port,
            swept_partial_writes=swept,
        )
        log.info(
            "node.started",
            ae_title=s.ae_title,
            port=self.port,
            tls=s.tls_cert is not None,
            client_certificates=s.tls_ca is not None,
            allowed_calling_aes=list(s.allowed_calling_aes) or "any",
            max_associations=s.max_associations,
            duplicate_policy=s.duplicate_policy,
            execution="celery" if s.broker_url else "inprocess",
            destinations=[str(d) for d in s.destinations],
        )
        self._rescan_thread = threading.Thread(
            target=self._rescan, args=(instances_dir, started_at), name="dicomnode-rescan", daemon=True
        )
        self._rescan_thread.start()
        return self

    def _start_dicomweb(self) -> None:
        """The STOW-RS service, when DICOMNODE_DICOMWEB_PORT is set: its instances take the
        C-STORE path (:meth:`_on_store`) into the same storage, SQL rows and study tracker."""
        s = self.settings
        if not s.dicomweb_port:
            return
        from dicomnode.dicomweb import StowConfig, StowServer, create_app

        app = create_app(
            StowConfig(
                incoming_dir=self.incoming_dir,
                token=s.dicomweb_token,
                max_part_bytes=s.max_dataset_bytes,
                max_request_bytes=s.dicomweb_max_request_bytes,
                min_free_bytes=s.min_free_bytes,
                early_writeback=s.fsync,
                chunk_timeout=s.network_timeout_seconds,
            ),
            self._on_store,
            self._on_association_end,
        )
        self.dicomweb = StowServer(
            app,
            s.dicomweb_host,
            s.dicomweb_port,
            limit_concurrency=s.max_associations,
            tls_cert=s.tls_cert,
            tls_key=s.tls_key,
        ).start()
        log.info(
            "dicomweb.started",
            host=s.dicomweb_host,
            port=self.dicomweb.port,
            https=s.tls_cert is not None,
            token=bool(s.dicomweb_token),
        )

    def _rescan(self, instances_dir: Path, started_at: float) -> None:
        """The start-up re-scan, after the port opened; a study it records gets a quiet period,
        like one a previous run left RECEIVING (the tracker then completes and dispatches it)."""
        assert self.store is not None
        try:
            report = rescan(
                self.store,
                instances_dir,
                before=started_at,
                on_recorded=self.tracker.touch,
                stop=self._rescan_stop,
            )
            self.rescan_report = report
            add_event(self.store, "node.rescan_done", **report.__dict__)
            log.info("node.rescan_done", **report.__dict__)
        except Exception as exc:  # the database down: the node keeps serving; the next start scans again
            log.error(
                "node.rescan_failed",
                error=type(exc).__name__,
                detail="check the database; the next start re-scans the storage folder",
            )
        finally:
            self._rescan_done.set()

    def wait_rescan(self, timeout: float | None = None) -> RescanReport | None:
        """Wait for the start-up re-scan; its report, or None (not done in time, or it failed)."""
        self._rescan_done.wait(timeout)
        return self.rescan_report

    def _recover(self) -> None:
        """After a restart: studies still receiving get a fresh quiet period; studies that were
        complete but never finished analysis are queued again."""
        assert self.store is not None
        for uid, _ in studies_in_state(self.store, StudyState.RECEIVING):
            self.tracker.touch(uid)
        for uid, _ in studies_in_state(self.store, StudyState.COMPLETE, StudyState.ANALYSING):
            log.info("node.requeue", study_uid=uid)
            set_study_state(self.store, uid, StudyState.COMPLETE, "re-queued after restart")
            self._dispatch(uid)
        assert self.runner is not None
        for uid, analysis_id in studies_awaiting_delivery(self.store):
            log.info("node.delivery_resumed", study_uid=uid)
            self.runner.resume_delivery(uid, analysis_id)

    def flush_records(self, timeout: float = 30.0) -> bool:
        """Wait until the SQL rows of every instance answered so far have committed (they follow
        the C-STORE response by milliseconds: :mod:`dicomnode.receive.recorder`)."""
        return self._handler is None or self._handler.recorder.flush(timeout)

    def _on_commitment(self, report: CommitmentReport) -> int:
        """A destination's Storage Commitment report: recorded; a failed object is delivered again."""
        assert self.store is not None  # the listener starts after the store opens
        outcome = record_report(self.store, report.transaction_uid, report.committed, report.failed)
        if outcome is None:  # not ours (or its rows purged): nothing to record, nothing to resend
            log.warning(
                "commitment.unknown_transaction", transaction_uid=report.transaction_uid, peer_ae=report.calling_ae
            )
        else:
            log.info(
                "commitment.report",
                transaction_uid=report.transaction_uid,
                peer_ae=report.calling_ae,
                committed=outcome.committed,
                failed=outcome.failed,
            )
        return SUCCESS

    def _on_store(self, req: StoreRequest) -> int:
        """The listener's C-STORE callback: the handler's, remembering which association sent
        the instance until its row commits (:meth:`_on_stored`)."""
        assert self._handler is not None
        uid, serial = req.sop_instance_uid, req.association
        with self._senders_lock:
            self._senders[uid] = serial
            if len(self._senders) > MAX_UNRECORDED_SENDERS:
                del self._senders[next(iter(self._senders))]
        code = self._handler(req)
        if code != SUCCESS:
            with self._senders_lock:
                if self._senders.get(uid) == serial:
                    del self._senders[uid]
        return code

    def _on_association_end(self, serial: int, released: bool) -> None:
        """An association ended (on its own thread, its connection closed): once every row it
        sent has committed, a release completes the studies it alone sent after the grace."""
        if released and self.settings.release_grace_seconds > 0 and self._handler is not None:
            released_at = self.tracker.clock()  # the grace runs while the last rows commit
            # the last instances' rows follow their responses by milliseconds (the recorder's batch)
            if self._handler.recorder.flush(timeout=min(self.settings.quiet_seconds, 10.0)):
                self.tracker.release(serial, released_at=released_at)
                return
        self.tracker.forget(serial)

    def _on_stored(self, inst: ReceivedInstance) -> None:
        with self._senders_lock:
            serial = self._senders.pop(inst.sop_instance_uid, None)
        self.tracker.touch(inst.study_uid, serial)
        if self.fingerprinter is not None:
            self.fingerprinter.poke()

    def _on_study_complete(self, study_uid: str) -> None:
        assert self.store is not None
        if set_study_state(self.store, study_uid, StudyState.COMPLETE, only_from=(StudyState.RECEIVING,)):
            log.info("study.complete", study_uid=study_uid)
            self._dispatch(study_uid)

    def _dispatch(self, study_uid: str) -> None:
        assert self.runner is not None and self.store is not None
        stamp_claimed(self.store, study_uid)  # the reconciler waits a while before it re-sends
        self.runner.submit(study_uid, utcnow())

    def stop(self, *, wait: bool = True, grace_seconds: float | None = None) -> None:
        """Refuse new associations, let open ones finish, stop the tracker and the runner.

        ``Listener.shutdown()`` only stops the accept loop and closes the listening socket;
        associations already open keep running on their own threads. So: shut the listener, wait up to ``grace_seconds`` (default
        ``shutdown_grace_seconds``) for established associations to be released by their senders,
        then abort what is left; an instance not yet answered was never claimed stored, and the
        sender re-sends it. Studies still inside their quiet period stay RECEIVING in SQL; the next
        start gives them a fresh quiet period, so nothing is lost or cut short."""
        if self._stopped:
            return
        self._stopped = True
        if self.dicomweb is not None:  # no new STOW-RS requests; those in progress finish first
            self.dicomweb.stop(self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds)
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
            deadline = time.monotonic() + grace
            open_ = [a for a in server.active_associations if a.is_established]
            if open_:
                log.info("node.draining", associations=len(open_), grace_seconds=grace)
            while open_ and time.monotonic() < deadline:
                time.sleep(0.05)
                open_ = [a for a in server.active_associations if a.is_established]
            left = server.active_associations
            busy = [a for a in left if a.is_established]
            for assoc in left:
                assoc.abort()
            # An aborted association may still be inside its C-STORE handler: let it finish its
            # write before the store goes away. (Threads that never got an A-ASSOCIATE-RQ wait for
            # one until the ACSE timeout; they hold nothing, so no join.)
            for assoc in busy:
                assoc.join(timeout=10)
            if busy:
                log.warning("node.aborted_associations", associations=len(busy))
        if self._rescan_thread is not None:
            self._rescan_stop.set()  # it ends after the batch in hand, before the store goes
            self._rescan_thread.join()
        if self._handler is not None:
            self._handler.stop()  # the rows of everything answered Success
        if self.fingerprinter is not None:
            self.fingerprinter.stop()
        if self.reconciler is not None:
            self.reconciler.stop()
        self.tracker.stop()
        if self.runner is not None:
            self.runner.shutdown(wait=wait)
        if self.store is not None:
            add_event(self.store, "node.stopped")
            self.store.dispose()
        log.info("node.stopped")

    def serve_forever(self) -> None:
        """Start and block until SIGINT/SIGTERM, then stop gracefully."""
        import signal

        done = threading.Event()

        def _stop(signum: int, _: Any) -> None:
            log.info("node.signal", signal=signum)
            done.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.start(check_model=True)
        while not done.wait(1.0):  # wake regularly so signals are handled promptly
            pass
        self.stop()
