"""The node: SCP + storage + tracker + task runner, started and stopped together."""

from __future__ import annotations

import threading
from typing import Any

import structlog

from .config import Settings
from .dispatch import TaskRunner, make_runner
from .scp import ReceivedInstance, StoreHandler, build_ae, handlers, use_incoming_dir
from .storage import sweep_partial_writes
from .store.db import Store
from .store.models import StudyState, utcnow
from .store.queries import studies_in_state
from .store.records import add_event, set_study_state
from .tracker import StudyTracker

log = structlog.get_logger("dicomnode.node")


class Node:
    """A running dicomnode. ``start()`` returns once the SCP listens; ``stop()`` shuts down."""

    def __init__(self, settings: Settings, *, runner: TaskRunner | None = None) -> None:
        self.settings = settings
        self.store: Store | None = None
        self.runner = runner
        self.tracker = StudyTracker(settings.quiet_seconds, self._on_study_complete)
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port the SCP listens on (the real one when configured as 0)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def start(self) -> Node:
        """Migrate the store, reconcile after a restart, start tracker and SCP."""
        s = self.settings
        s.instances_dir.mkdir(parents=True, exist_ok=True)
        swept = sweep_partial_writes(s.instances_dir)
        self.store = Store(s.effective_database_url)
        if self.runner is None:
            self.runner = make_runner(s, self.store)
        self._recover()
        self.tracker.start()
        ae = build_ae(s.ae_title)
        handler = StoreHandler(self.store, s.instances_dir, self._on_stored)
        self._server = ae.start_server((s.host, s.port), block=False, evt_handlers=handlers(handler))
        add_event(self.store, "node.started", ae_title=s.ae_title, port=self.port, swept_partial_writes=swept)
        log.info(
            "node.started",
            ae_title=s.ae_title,
            port=self.port,
            execution="celery" if s.broker_url else "inprocess",
            destinations=[str(d) for d in s.destinations],
        )
        return self

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

    def _on_stored(self, inst: ReceivedInstance) -> None:
        self.tracker.touch(inst.study_uid)

    def _on_study_complete(self, study_uid: str) -> None:
        assert self.store is not None
        if set_study_state(self.store, study_uid, StudyState.COMPLETE, only_from=(StudyState.RECEIVING,)):
            log.info("study.complete", study_uid=study_uid)
            self._dispatch(study_uid)

    def _dispatch(self, study_uid: str) -> None:
        assert self.runner is not None
        self.runner.submit(study_uid, utcnow())

    def stop(self, *, wait: bool = True) -> None:
        """Refuse new associations, stop the tracker and the runner.

        Studies still inside their quiet period stay RECEIVING in SQL; the next start gives them a
        fresh quiet period (a sender may still be sending), so nothing is lost or cut short."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.tracker.stop()
        if self.runner is not None:
            self.runner.shutdown(wait=wait)
        if self.store is not None:
            add_event(self.store, "node.stopped")
            self.store.dispose()
        log.info("node.stopped")

    def serve_forever(self) -> None:
        """Start and block until SIGINT/SIGTERM."""
        import signal

        done = threading.Event()

        def _stop(signum: int, _: Any) -> None:
            log.info("node.signal", signal=signum)
            done.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        use_incoming_dir(self.settings.storage_dir / "incoming")
        self.start()
        done.wait()
        self.stop()
