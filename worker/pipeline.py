"""One study from stored files to delivered results. Callable without Celery.

select -> read -> preprocess (dicomnode.model.preprocess, the same code training used) -> ONNX ->
SR + SC (dicomnode.results) -> write -> C-STORE to every destination -> SQL.
The embedded mode, the Celery task and the tests all call :meth:`Pipeline.analyse_study`.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import structlog
from pydicom import Dataset
from pydicom.uid import EnhancedSRStorage

from dicomnode.config import Settings
from dicomnode.delivery.sender import AttemptResult, Fallback, backoff_after, deliver
from dicomnode.model.inference import PneumoniaModel
from dicomnode.model.preprocess import preprocess
from dicomnode.model.selection import Decision, select
from dicomnode.receive.storage import write_atomic
from dicomnode.results import Finding, build_heatmap_sc, build_sr, result_uids
from dicomnode.store.db import Store
from dicomnode.store.models import DELIVERY_RETRY_REASON, StudyState, utcnow
from dicomnode.store.queries import (
    attempts_made,
    delivered_objects,
    latest_analysis,
    study_instances,
    study_state,
)
from dicomnode.store.records import (
    record_delivery_attempt,
    set_study_state,
    start_analysis,
    update_analysis,
)

log = structlog.get_logger("worker.pipeline")

#: Schedules another delivery round for (study UID, analysis ID) after a delay in seconds: a
#: Celery task with a countdown, or a timer in the embedded runner. Without one, every retry
#: happens in the caller (``dicomnode resend``).
Defer = Callable[[str, int, float], None]

#: Delivery attempts the analysing worker makes itself (a PACS that blinked); the rest of the
#: budget is left to scheduled rounds, so a PACS that is down does not hold the worker.
INLINE_ATTEMPTS = 2


@dataclass(frozen=True)
class StudyOutcome:
    """What happened to one study."""

    study_uid: str
    state: StudyState
    score: float | None = None
    priority: str | None = None
    reason: str | None = None
    skipped: bool = False  # already analysed with this model: nothing done (idempotent re-delivery)
    result_paths: tuple[Path, ...] = field(default_factory=tuple)


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


class Pipeline:
    """Everything a worker process needs, created once: settings, store, model."""

    def __init__(
        self, settings: Settings, store: Store, model: PneumoniaModel, *, defer: Defer | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.model = model
        self.defer = defer

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        """Open the store (migrating it) and load the model named by the settings."""
        return cls(settings, Store(settings.effective_database_url), PneumoniaModel(settings.model_path))

    def already_done(self, study_uid: str) -> bool:
        """True if this model already produced this study's results after its last instance."""
        state = study_state(self.store, study_uid)
        if state not in (StudyState.DELIVERED, StudyState.ANALYSED, StudyState.NOT_APPLICABLE):
            return False
        a = latest_analysis(self.store, study_uid)
        return a is not None and a.finished_at is not None and a.model_version == self.model.card.version

    def analyse_study(
        self, study_uid: str, *, queued_at: datetime | None = None, execution: str = "inprocess"
    ) -> StudyOutcome:
        """Analyse one complete study and deliver its results; records every step in SQL."""
        if self.already_done(study_uid):
            log.info("study.skipped", study_uid=study_uid, reason="already analysed with this model")
            return StudyOutcome(
                study_uid, study_state(self.store, study_uid) or StudyState.DELIVERED, skipped=True
            )
        card = self.model.card
        bound = log.bind(study_uid=study_uid, model_version=card.version)
        analysis_id = start_analysis(
            self.store,
            study_uid,
            model_name=card.name,
            model_version=card.version,
            queued_at=queued_at,
            execution=execution,
        )
        try:
            return self._run(study_uid, analysis_id, bound)
        except Exception as exc:
            bound.exception("study.failed")
            update_analysis(
                self.store, analysis_id, error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=utcnow()
            )
            set_study_state(self.store, study_uid, StudyState.FAILED, f"{type(exc).__name__}: {exc}"[:500])
            raise

    def _run(
        self, study_uid: str, analysis_id: int, bound: structlog.typing.FilteringBoundLogger
    ) -> StudyOutcome:
        card = self.model.card
        t0 = time.perf_counter()
        sources: list[Dataset] = []
        images: list[np.ndarray] = []
        decisions: list[Decision] = []
        rules = self.settings.selection_rules
        for inst in study_instances(self.store, study_uid):
            try:
                # pixel data stays on disk until preprocess needs it: instances the rules
                # skip (a CT series in the same study, say) are never read in full
                ds = pydicom.dcmread(inst.path, defer_size="64 KB")
            except Exception as exc:
                decisions.append(Decision(inst.sop_instance_uid, False, f"unreadable ({type(exc).__name__})"))
                continue
            d = select(ds, rules)
            if d.selected:
                try:
                    images.append(preprocess(ds, self.model.preprocess_config))
                    sources.append(ds)
                except Exception as exc:  # undecodable pixel data, multi-frame, colour...
                    d = Decision(
                        d.sop_instance_uid, False, f"cannot preprocess ({type(exc).__name__}: {exc})"[:300]
                    )
            decisions.append(d)
        update_analysis(
            self.store,
            analysis_id,
            preprocessed_at=utcnow(),
            instances_analysed=len(sources),
            selection=[d.as_dict() for d in decisions],
        )
        if not sources:
            reasons = sorted({d.reason for d in decisions})
            reason = (
                ("no instance the model can read: " + "; ".join(reasons))[:900]
                if decisions
                else "study has no instances"
            )
            update_analysis(self.store, analysis_id, error=reason, finished_at=utcnow())
            set_study_state(self.store, study_uid, StudyState.NOT_APPLICABLE, reason)
            bound.info("study.not_applicable", instances=len(decisions))
            return StudyOutcome(study_uid, StudyState.NOT_APPLICABLE, reason=reason)

        probs, cams = self.model.predict(np.stack(images))
        t_infer = time.perf_counter()
        best = int(np.argmax(probs))
        finding = Finding(probability=float(probs[best]), threshold=card.threshold)
        update_analysis(
            self.store,
            analysis_id,
            inferred_at=utcnow(),
            score=finding.probability,
            threshold=card.threshold,
            finding_present=finding.present,
            priority=finding.priority.value,
        )

        uids = result_uids(study_uid, card.version)
        sr = build_sr(sources, finding, card, uids=uids)
        sc = build_heatmap_sc(sources[best], cams[best], finding, card, uids=uids)
        out_dir = self.settings.results_dir / study_uid
        paths = []
        for result in (sr, sc):
            stored = write_atomic(out_dir / f"{result.SOPInstanceUID}.dcm", _encode(result))
            paths.append(stored.path)
        t_results = time.perf_counter()
        update_analysis(
            self.store,
            analysis_id,
            results_built_at=utcnow(),
            sr_sop_instance_uid=str(sr.SOPInstanceUID),
            sc_sop_instance_uid=str(sc.SOPInstanceUID),
        )
        bound.info(
            "study.analysed",
            score=round(finding.probability, 4),
            priority=finding.priority.value,
            images=len(sources),
            preprocess_ms=round((t_infer - t0) * 1000, 1),
            results_ms=round((t_results - t_infer) * 1000, 1),
        )

        def enhanced(ds: Dataset) -> Dataset | None:
            if ds.SOPInstanceUID == sr.SOPInstanceUID:
                return build_sr(sources, finding, card, uids=uids, enhanced=True)
            return None

        state = deliver_results(
            self.settings, self.store, study_uid, analysis_id, [sr, sc], fallback=enhanced, defer=self.defer
        )
        return StudyOutcome(
            study_uid, state, finding.probability, finding.priority.value, result_paths=tuple(paths)
        )


def deliver_results(
    settings: Settings,
    store: Store,
    study_uid: str,
    analysis_id: int,
    datasets: Sequence[Dataset],
    *,
    fallback: Fallback | None = None,
    finishing: bool = True,
    defer: Defer | None = None,
    continuing: bool = False,
) -> StudyState:
    """C-STORE ``datasets`` to every destination with retries, record each attempt, set the state.

    Without ``defer`` every attempt of the budget (``DICOMNODE_DELIVERY_ATTEMPTS``) is made here,
    sleeping between them. With it, only the first :data:`INLINE_ATTEMPTS` (or, ``continuing`` a
    scheduled round, one more attempt) are made here; if attempts are left, the study stays
    ANALYSED with the next retry in its reason and ``defer`` schedules the next round after the
    usual backoff. ``finishing`` stamps the analysis finished (first delivery); a re-send leaves
    that stamp alone.
    """

    def record(r: AttemptResult) -> None:
        record_delivery_attempt(
            store,
            analysis_id,
            destination=r.destination,
            sop_instance_uid=r.sop_instance_uid,
            attempt=r.attempt,
            success=r.success,
            status=r.status,
            error=r.error,
        )

    budget = settings.delivery_attempts
    made = attempts_made(store, analysis_id) if continuing else {}
    # A re-delivered task (its worker died after sending) must not send a second copy.
    done = delivered_objects(store, study_uid)
    all_ok = True
    next_round: float | None = None
    for dest in settings.destinations:
        todo = [ds for ds in datasets if (str(dest), str(ds.SOPInstanceUID)) not in done]
        if not todo:
            log.info("delivery.already_done", study_uid=study_uid, destination=str(dest))
            continue
        first = made.get(str(dest), 0) + 1
        left = budget - first + 1
        if left <= 0:
            all_ok = False
            continue
        now_attempts = left if defer is None else min(left, 1 if continuing else INLINE_ATTEMPTS)
        ok = deliver(
            todo,
            dest,
            calling_ae=settings.ae_title,
            attempts=now_attempts,
            backoff_seconds=settings.delivery_backoff_seconds,
            backoff_max_seconds=settings.delivery_backoff_max_seconds,
            on_attempt=record,
            fallback=fallback,
            extra_sop_classes=[str(EnhancedSRStorage)],
            first_attempt=first,
            last_attempt=budget,
        )
        all_ok = all_ok and ok
        last = first + now_attempts - 1
        if not ok and last < budget:
            wait = backoff_after(
                last, settings.delivery_backoff_seconds, settings.delivery_backoff_max_seconds
            )
            next_round = wait if next_round is None else min(next_round, wait)
    now = utcnow()
    if finishing:
        update_analysis(store, analysis_id, finished_at=now)
    if not all_ok and next_round is not None and defer is not None:
        # attempts are left: this worker moves on to the next study; a scheduled round goes on
        set_study_state(
            store,
            study_uid,
            StudyState.ANALYSED,
            f"{DELIVERY_RETRY_REASON} in {next_round:g} s (budget {budget} attempts)",
            only_from=(StudyState.ANALYSING, StudyState.ANALYSED),
        )
        log.info("delivery.scheduled", study_uid=study_uid, in_seconds=next_round)
        defer(study_uid, analysis_id, next_round)
        return StudyState.ANALYSED
    if not settings.destinations:
        state = StudyState.ANALYSED
    elif all_ok:
        state = StudyState.DELIVERED
    else:
        state = StudyState.DELIVERY_FAILED
    if all_ok and settings.destinations:
        update_analysis(store, analysis_id, delivered_at=now)
    reason = None
    if state is StudyState.DELIVERY_FAILED:
        reason = f"retry budget exhausted; re-send with `dicomnode resend {study_uid}`"
    set_study_state(
        store,
        study_uid,
        state,
        reason,
        only_from=(
            StudyState.ANALYSING,
            StudyState.DELIVERY_FAILED,
            StudyState.DELIVERED,
            StudyState.ANALYSED,
        ),
    )
    return state


def retry_delivery(
    settings: Settings, store: Store, study_uid: str, analysis_id: int, defer: Defer | None
) -> StudyState | None:
    """One scheduled delivery round for an analysis; None when a newer analysis replaced it."""
    a = latest_analysis(store, study_uid)
    if a is None or a.id != analysis_id:
        log.info("delivery.superseded", study_uid=study_uid, analysis_id=analysis_id)
        return None
    if study_state(store, study_uid) is not StudyState.ANALYSED:  # re-sent by hand, or re-opened
        return study_state(store, study_uid)
    datasets = _results_of(settings, study_uid, a.sr_sop_instance_uid, a.sc_sop_instance_uid)
    return deliver_results(
        settings, store, study_uid, a.id, datasets, finishing=False, defer=defer, continuing=True
    )


def _results_of(settings: Settings, study_uid: str, *uids: str | None) -> list[Dataset]:
    if not all(uids):
        raise LookupError(f"study {study_uid} has no results to send: `dicomnode results` lists what exists")
    folder = settings.results_dir / study_uid
    datasets: list[Dataset] = []
    for uid in uids:
        path = folder / f"{uid}.dcm"
        if not path.is_file():
            raise FileNotFoundError(f"result file {path} is missing: re-run the analysis instead")
        datasets.append(pydicom.dcmread(path))
    return datasets


def resend(settings: Settings, store: Store, study_uid: str) -> StudyState:
    """Deliver a study's latest results again (after a destination was down past the retries)."""
    a = latest_analysis(store, study_uid)
    if a is None:
        raise LookupError(f"study {study_uid} has no results to send: `dicomnode results` lists what exists")
    datasets = _results_of(settings, study_uid, a.sr_sop_instance_uid, a.sc_sop_instance_uid)
    log.info("study.resend", study_uid=study_uid, analysis_id=a.id)
    return deliver_results(settings, store, study_uid, a.id, datasets, finishing=False)


def execution_label(kind: str) -> str:
    """``inprocess`` or ``celery:<host>`` for the analysis row."""
    return kind if kind == "inprocess" else f"{kind}:{socket.gethostname()}"[:32]


__all__ = [
    "Defer",
    "Pipeline",
    "StudyOutcome",
    "deliver_results",
    "execution_label",
    "resend",
    "retry_delivery",
]
