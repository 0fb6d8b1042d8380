"""One study from stored files to delivered results. Callable without Celery.

select -> read -> preprocess (dicomnode.model.preprocess, the same code training used) -> ONNX ->
SR + SC (dicomnode.results) -> write -> C-STORE to every destination -> SQL.
The embedded mode, the Celery task and the tests all call :meth:`Pipeline.analyse_study`; the
delivery and its retries are :mod:`dicomnode.delivery`'s.
"""

from __future__ import annotations

import functools
import io
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import structlog
from pydicom import Dataset

from dicomnode.config import Settings
from dicomnode.delivery import Defer, deliver_results, hand_off, result_file
from dicomnode.delivery.revisions import predecessor_srs
from dicomnode.model import PneumoniaModel
from dicomnode.model.decode import (
    DecodeError,
    DecodeFailed,
    DecodeLimits,
    Decoder,
    ImageRefused,
    check_decode_bounds,
)
from dicomnode.model.selection import Decision, select
from dicomnode.model.threads import single_blas_thread
from dicomnode.results import Finding, build_sr, changed_keywords, result_uids
from dicomnode.results.render import MAX_SIDE
from dicomnode.results.sanitise import full_or_minimal
from dicomnode.results.sc import heatmap_sc_file
from dicomnode.results.sc import warm_up as warm_up_sc
from dicomnode.results.sr_template import SRTemplates
from dicomnode.storage import is_deflated, read_file_meta, read_instance, write_atomic
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState, utcnow
from dicomnode.store.queries import latest_analysis, study_instances, study_state
from dicomnode.store.records import (
    AnalysisAttemptsExhausted,
    end_analysis,
    start_analysis,
    update_analysis,
)

log = structlog.get_logger("worker.pipeline")


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


@dataclass(frozen=True)
class Started:
    """A study whose analysis attempt is counted (:meth:`Pipeline.start`)."""

    study_uid: str
    analysis_id: int
    bound: structlog.typing.FilteringBoundLogger


@dataclass
class Prepared:
    """A started study with its preprocessed images, ready for the model (:meth:`Pipeline.prepare`)."""

    started: Started
    sources: list[Dataset]
    source_paths: list[str]
    #: preprocessed images [1, S, S], one per source, in the same order
    images: list[np.ndarray]
    t0: float  # when preparing began (perf_counter), for the study.analysed timings

    @property
    def study_uid(self) -> str:
        return self.started.study_uid

    @property
    def analysis_id(self) -> int:
        return self.started.analysis_id

    @property
    def bound(self) -> structlog.typing.FilteringBoundLogger:
        return self.started.bound


class Pipeline:
    """Everything a worker process needs, created once: settings, store, model."""

    def __init__(
        self, settings: Settings, store: Store, model: PneumoniaModel, *, defer: Defer | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.model = model
        self.defer = defer
        single_blas_thread()  # the CAM products are tiny: spinning BLAS threads only cost CPU
        #: decodes and preprocesses in a memory-limited child process (dicomnode.model.decode)
        self.decoder = Decoder(
            DecodeLimits.from_settings(settings),
            reader=functools.partial(read_instance, max_inflated_bytes=settings.max_inflated_bytes),
            # the heatmap SC is built there too (heatmap_sc_file): its tables load before the cap
            warm=functools.partial(warm_up_sc, model.card),
        )
        #: the SR of a header shape seen before is filled in, not rebuilt (dicomnode.results.sr_template)
        self.sr_templates = SRTemplates()
        #: waits for the decoding process's heatmap while the analysing thread builds the SR (made
        #: in the process that uses it: a forked worker gets its own)
        self._heatmaps: ThreadPoolExecutor | None = None
        self._heatmaps_pid = 0

    def close(self) -> None:
        """Stop the decoding process (a later study starts another)."""
        self.decoder.close()
        if self._heatmaps is not None:
            self._heatmaps.shutdown(wait=True)
            self._heatmaps = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        """Open the store (migrating it) and load the model named by the settings."""
        return cls(settings, Store(settings.effective_database_url), PneumoniaModel.from_settings(settings))

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
        started = self.start(study_uid, queued_at=queued_at, execution=execution)
        if isinstance(started, StudyOutcome):
            return started
        try:
            return self._run(started)
        except Exception as exc:
            self.fail(started, exc)
            raise

    def start(
        self, study_uid: str, *, queued_at: datetime | None = None, execution: str = "inprocess"
    ) -> Started | StudyOutcome:
        """Count an analysis attempt of ``study_uid`` (its SQL row); the outcome instead when the
        study has used up its attempts. The first step of :meth:`analyse_study` and of
        ``worker.batch``."""
        card = self.model.card
        bound = log.bind(study_uid=study_uid, model_version=card.version)
        try:  # counts the attempt; a study that killed every worker before fails here instead
            analysis_id = start_analysis(
                self.store,
                study_uid,
                model_name=card.name,
                model_version=card.version,
                queued_at=queued_at,
                execution=execution,
                max_attempts=self.settings.max_analysis_attempts,
            )
        except AnalysisAttemptsExhausted as exc:
            bound.error("study.failed", reason=str(exc))
            return StudyOutcome(study_uid, StudyState.FAILED, reason=str(exc))
        return Started(study_uid, analysis_id, bound)

    def fail(self, started: Started, exc: BaseException) -> None:
        """Record that the analysis of a started study raised ``exc`` (logged with its traceback)."""
        started.bound.exception("study.failed")
        reason = failure_reason(exc)
        end_analysis(
            self.store,
            started.analysis_id,
            started.study_uid,
            StudyState.FAILED,
            reason,
            error=reason,
            finished_at=utcnow(),
        )

    def _read_header(self, path: str) -> Dataset:
        """The instance's header for selection and the results, its pixel data left in the file.

        A deflated data set has no offsets to defer to: it is inflated whole, so the decoding
        process reads it (within its memory cap) and only the header comes back.
        """
        if self.decoder.isolated:
            with open(path, "rb") as fh:
                deflated = is_deflated(str(read_file_meta(fh).get("TransferSyntaxUID", "") or ""))
            if deflated:
                return self.decoder.header(path)
        # pixel data stays on disk: instances the rules skip (a CT series in the same study, say)
        # are never read in full, and the decoding process reads the others itself
        return read_instance(path, max_inflated_bytes=self.settings.max_inflated_bytes, defer_size="64 KB")

    def _run(self, started: Started) -> StudyOutcome:
        prepared = self.prepare(started)
        if isinstance(prepared, StudyOutcome):
            return prepared
        probs, cams = self.model.predict(np.stack(prepared.images))
        return self.finish(prepared, probs, cams)

    def prepare(self, started: Started) -> Prepared | StudyOutcome:
        """Select, decode and preprocess the study's instances; the outcome instead when none
        can be analysed (recorded in SQL either way)."""
        study_uid, analysis_id, bound = started.study_uid, started.analysis_id, started.bound
        t0 = time.perf_counter()
        sources: list[Dataset] = []
        source_paths: list[str] = []
        images: list[np.ndarray] = []
        decisions: list[Decision] = []
        failures: list[str] = []  # the decoding process ran out of memory, crashed or timed out
        rules = self.settings.selection_rules
        config = self.model.preprocess_config
        for inst in study_instances(self.store, study_uid):
            try:
                ds = self._read_header(inst.path)
            except DecodeFailed as exc:
                failures.append(str(exc))
                decisions.append(Decision(inst.sop_instance_uid, False, f"unreadable: {exc}"[:300]))
                continue
            except Exception as exc:
                kind = exc.kind if isinstance(exc, DecodeError) else type(exc).__name__
                decisions.append(Decision(inst.sop_instance_uid, False, f"unreadable ({kind})"))
                continue
            d = select(ds, rules)
            if d.selected:
                try:
                    # the size the header claims, before a byte is decoded (a pixel bomb stops here)
                    check_decode_bounds(ds, self.settings.max_image_pixels)
                    images.append(self.decoder.tensor(inst.path, config, MAX_SIDE))
                    sources.append(ds)
                    source_paths.append(inst.path)
                except ImageRefused as exc:
                    d = Decision(d.sop_instance_uid, False, str(exc)[:300])
                except DecodeFailed as exc:
                    failures.append(str(exc))
                    d = Decision(d.sop_instance_uid, False, str(exc)[:300])
                    bound.warning("instance.decode_failed", sop_instance_uid=d.sop_instance_uid)
                except Exception as exc:  # undecodable pixel data, multi-frame, colour...
                    kind = exc.kind if isinstance(exc, DecodeError) else type(exc).__name__
                    d = Decision(d.sop_instance_uid, False, f"cannot preprocess ({kind}: {exc})"[:300])
            decisions.append(d)
        preprocessed = dict(
            preprocessed_at=utcnow(),
            instances_analysed=len(sources),
            selection=[d.as_dict() for d in decisions],
        )
        if not sources and failures:  # not the image's fault alone: say which setting to change
            reason = f"{len(failures)} instance(s) could not be decoded: {failures[0]}"[:900]
            end_analysis(
                self.store,
                analysis_id,
                study_uid,
                StudyState.FAILED,
                reason,
                **preprocessed,
                error=reason,
                finished_at=utcnow(),
            )
            bound.error("study.failed", reason=reason)
            return StudyOutcome(study_uid, StudyState.FAILED, reason=reason)
        if not sources:
            reasons = sorted({d.reason for d in decisions})
            reason = (
                ("no instance the model can read: " + "; ".join(reasons))[:900]
                if decisions
                else "study has no instances"
            )
            end_analysis(
                self.store,
                analysis_id,
                study_uid,
                StudyState.NOT_APPLICABLE,
                reason,
                **preprocessed,
                error=reason,
                finished_at=utcnow(),
            )
            bound.info("study.not_applicable", instances=len(decisions))
            return StudyOutcome(study_uid, StudyState.NOT_APPLICABLE, reason=reason)
        update_analysis(self.store, analysis_id, **preprocessed)
        return Prepared(started, sources, source_paths, images, t0)

    def finish(self, prepared: Prepared, probs: np.ndarray, cams: np.ndarray) -> StudyOutcome:
        """Results of a prepared study from the model's outputs for its images (in their order):
        SR and SC built, written, recorded and handed to delivery."""
        card = self.model.card
        study_uid, analysis_id, bound = prepared.study_uid, prepared.analysis_id, prepared.bound
        sources, t0 = prepared.sources, prepared.t0
        t_infer = time.perf_counter()
        best = int(np.argmax(probs))
        finding = Finding(probability=float(probs[best]), threshold=card.threshold)
        inferred = dict(
            inferred_at=utcnow(),
            score=finding.probability,
            threshold=card.threshold,
            finding_present=finding.present,
            priority=finding.priority.value,
        )
        try:
            sr, sc, paths, rebuild_sr = self._results(prepared, finding, cams[best], best)
        except Exception:  # the failed analysis keeps its score, as the finding was made
            update_analysis(self.store, analysis_id, **inferred)
            raise
        t_results = time.perf_counter()
        # one transaction for the model's finding and the results that carry it
        update_analysis(
            self.store,
            analysis_id,
            **inferred,
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

        if self.defer is not None:  # delivery is its own unit of work: never wait for a destination here
            state = hand_off(self.settings, self.store, study_uid, analysis_id, self.defer)
        else:
            state = deliver_results(
                self.settings, self.store, study_uid, analysis_id, [sr, sc], fallback=rebuild_sr
            )
        return StudyOutcome(
            study_uid, state, finding.probability, finding.priority.value, result_paths=tuple(paths)
        )

    def _results(
        self, prepared: Prepared, finding: Finding, cam: np.ndarray, best: int
    ) -> tuple[Dataset, Dataset, list[Path], Callable[[Dataset], Dataset | None]]:
        """The SR and the heatmap SC built, encoded once and written; with the Enhanced SR
        fallback for destinations that refuse the Comprehensive 3D SR."""
        card = self.model.card
        study_uid, bound = prepared.study_uid, prepared.bound
        sources, source_paths = prepared.sources, prepared.source_paths
        config = self.model.preprocess_config
        # the analysed images name the revision: new content, new UIDs; a re-run of the same, the same
        uids = result_uids(study_uid, card.version, [str(ds.SOPInstanceUID) for ds in sources])
        # the heatmap is drawn and encoded where the radiograph was decoded (the decoding process),
        # meanwhile this thread builds and writes the SR
        if self._heatmaps is None or self._heatmaps_pid != os.getpid():
            self._heatmaps = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heatmap")
            self._heatmaps_pid = os.getpid()
        heatmap_call = self._heatmaps.submit(
            self.decoder.call,
            heatmap_sc_file,
            self.decoder.reader,
            source_paths[best],
            config,
            self.decoder.limits.max_pixels,
            MAX_SIDE,
            sources[best],
            cam,
            finding,
            card,
            uids,
        )
        try:
            predecessors = predecessor_srs(self.settings, self.store, study_uid, uids.sr_instance)
            changed = changed_keywords(sources)
            if changed:  # once per study, keywords only: the values may be a patient's
                bound.info("results.header_sanitised", attributes=changed)
            sr, sr_bytes, sr_minimal = _build_result(
                lambda minimal: self.sr_templates.build(
                    sources, finding, card, uids=uids, minimal=minimal, predecessors=predecessors
                ),
                "sr",
                bound,
            )
            paths = [write_atomic(result_file(self.settings, study_uid, uids.sr_instance), sr_bytes).path]
        finally:
            heatmap = heatmap_call.result()  # never left running: the next study decodes there
        if heatmap.minimal:
            bound.warning("results.minimal_header", result="sc", error=heatmap.error)
        sc = pydicom.dcmread(io.BytesIO(heatmap.data))
        paths.append(write_atomic(result_file(self.settings, study_uid, uids.sc_instance), heatmap.data).path)

        def enhanced(ds: Dataset) -> Dataset | None:
            if ds.SOPInstanceUID == sr.SOPInstanceUID:
                return build_sr(
                    sources,
                    finding,
                    card,
                    uids=uids,
                    enhanced=True,
                    minimal=sr_minimal,
                    predecessors=predecessors,
                )
            return None

        return sr, sc, paths, enhanced


def _build_result(
    build: Callable[[bool], tuple[Dataset, bytes]], what: str, bound: structlog.typing.FilteringBoundLogger
) -> tuple[Dataset, bytes, bool]:
    """``build(False)``, the result and its Part 10 bytes, else ``build(True)``, the minimal header
    (:func:`dicomnode.results.sanitise.full_or_minimal`), logged; and whether it is the minimal one.

    The full header is copied from the sources made valid (dicomnode.results.sanitise); should
    highdicom or pydicom still refuse it, the result goes out filed with the patient and study but
    without their optional attributes, rather than the study failing after inference.
    """
    (result, data), error = full_or_minimal(
        build, lambda error: bound.warning("results.minimal_header", result=what, error=error)
    )
    return result, data, error is not None


def failure_reason(exc: BaseException) -> str:
    """What SQL records of a failed analysis: the exception type and what to do, never its text.

    Exception texts from pydicom and highdicom quote header values (a birth date, a name); the
    worker log has the traceback.
    """
    return (
        f"{type(exc).__name__} during analysis: the worker log has the traceback (event study.failed "
        "with this study_uid); fix the cause, then re-send the study to analyse it again"
    )


def execution_label(kind: str) -> str:
    """``inprocess`` or ``celery:<host>`` for the analysis row."""
    return kind if kind == "inprocess" else f"{kind}:{socket.gethostname()}"[:32]


__all__ = ["Pipeline", "Prepared", "Started", "StudyOutcome", "execution_label", "failure_reason"]
