"""Several waiting studies analysed together: each prepared as alone, their images in one model call.

A GPU is used well only by batches: one radiograph keeps it busy for a fraction of the time it
takes to copy the batch there and back. :func:`analyse_studies` takes the studies a worker has
waiting (the embedded runner drains up to ``DICOMNODE_BATCH_MAX_STUDIES``:
:class:`worker.runners.InProcessRunner`) and runs the steps of :class:`worker.pipeline.Pipeline`
on them:

1. :meth:`~worker.pipeline.Pipeline.start` each (the attempt counted, a study already analysed
   with this model skipped), then :meth:`~worker.pipeline.Pipeline.prepare` each: selection,
   decoding and preprocessing in the pipeline's memory-capped decoding process, one image at a
   time as for a single study;
2. one :meth:`dicomnode.model.PneumoniaModel.predict` on all their images (it splits them into
   batches of the model's ``batch_size``);
3. :meth:`~worker.pipeline.Pipeline.finish` each with its own scores and CAMs: the same SR, SC,
   SQL rows and hand-off to delivery as :meth:`~worker.pipeline.Pipeline.analyse_study` gives.

A study that fails fails alone: its failure is recorded as ``analyse_study`` records one, and the
others go on. Should the joint model call fail, each study's images are scored on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import structlog

from dicomnode.store.models import StudyState
from dicomnode.store.queries import study_state
from worker.pipeline import Pipeline, Prepared, Started, StudyOutcome, failure_reason

log = structlog.get_logger("worker.batch")


def analyse_studies(
    pipeline: Pipeline, studies: Sequence[tuple[str, datetime | None]], *, execution: str = "inprocess"
) -> list[StudyOutcome]:
    """Analyse ``studies`` (Study Instance UID, when queued) together; their outcomes in order.

    Each outcome is what :meth:`~worker.pipeline.Pipeline.analyse_study` returns for that study
    alone, except that a study whose analysis raised gets a FAILED outcome (the failure recorded
    in SQL and logged with its traceback) instead of the exception."""
    outcomes: list[StudyOutcome | None] = [None] * len(studies)
    prepared: list[tuple[int, Prepared]] = []
    for i, (study_uid, queued_at) in enumerate(studies):
        if pipeline.already_done(study_uid):
            log.info("study.skipped", study_uid=study_uid, reason="already analysed with this model")
            state = study_state(pipeline.store, study_uid) or StudyState.DELIVERED
            outcomes[i] = StudyOutcome(study_uid, state, skipped=True)
            continue
        started = pipeline.start(study_uid, queued_at=queued_at, execution=execution)
        if isinstance(started, StudyOutcome):
            outcomes[i] = started
            continue
        try:
            ready = pipeline.prepare(started)
        except Exception as exc:
            outcomes[i] = _failed(pipeline, started, exc)
            continue
        if isinstance(ready, StudyOutcome):
            outcomes[i] = ready
        else:
            prepared.append((i, ready))

    for (i, study), scored in zip(prepared, _predict(pipeline, [p for _, p in prepared]), strict=True):
        try:
            if isinstance(scored, BaseException):
                raise scored
            outcomes[i] = pipeline.finish(study, *scored)
        except Exception as exc:
            outcomes[i] = _failed(pipeline, study.started, exc)
    if prepared:
        log.info(
            "batch.analysed",
            studies=len(studies),
            inferred=len(prepared),
            images=sum(len(p.images) for _, p in prepared),
        )
    return [o for o in outcomes if o is not None]


def _predict(pipeline: Pipeline, studies: list[Prepared]) -> list[tuple[np.ndarray, np.ndarray] | Exception]:
    """Each study's probabilities and CAMs, from one model call on all their images; should it
    fail, from a call per study (the exception for a study whose own call fails too)."""
    if not studies:
        return []
    try:
        probs, cams = pipeline.model.predict(np.stack([im for s in studies for im in s.images]))
    except Exception:
        log.exception("batch.inference_failed", studies=len(studies), fallback="one study at a time")
    else:
        ends = np.cumsum([len(s.images) for s in studies])
        return [
            (probs[e - len(s.images) : e], cams[e - len(s.images) : e])
            for s, e in zip(studies, ends, strict=True)
        ]
    alone: list[tuple[np.ndarray, np.ndarray] | Exception] = []
    for s in studies:
        try:
            alone.append(pipeline.model.predict(np.stack(s.images)))
        except Exception as exc:
            alone.append(exc)
    return alone


def _failed(pipeline: Pipeline, started: Started, exc: Exception) -> StudyOutcome:
    """Record the failure as :meth:`~worker.pipeline.Pipeline.analyse_study` does (called in the
    ``except`` block, so the log has the traceback); the study's outcome."""
    pipeline.fail(started, exc)
    return StudyOutcome(started.study_uid, StudyState.FAILED, reason=failure_reason(exc))


__all__ = ["analyse_studies"]
