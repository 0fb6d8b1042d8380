"""Delivery rounds of a study's results, with their SQL bookkeeping.

A round sends the results to every destination that does not have them yet, records each attempt,
moves the study to the state :mod:`dicomnode.delivery.retry` decides and, while attempts are left,
has the next round scheduled. The analysing worker runs the first round
(:func:`deliver_results`), a scheduler the later ones (:func:`retry_delivery`), and an operator
a fresh budget (:func:`resend`, ``dicomnode resend``); the last two read the stored result files
back (:func:`read_results`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path

import pydicom
import structlog
from pydicom import Dataset
from pydicom.uid import EnhancedSRStorage

from dicomnode.config import Settings
from dicomnode.delivery.commitment import request_and_record
from dicomnode.delivery.hook import notify_urgent
from dicomnode.delivery.retry import INLINE_ATTEMPTS, Defer, RetryPolicy, deliver, end_state
from dicomnode.delivery.sender import AttemptResult, Fallback, enhanced_sr_fallback, send_once
from dicomnode.delivery.stow import StowAuth
from dicomnode.delivery.stow import send_once as stow_send_once
from dicomnode.store.commitments import uncommitted_objects
from dicomnode.store.db import Store
from dicomnode.store.models import DELIVERY_RETRY_REASON, StudyState, utcnow
from dicomnode.store.queries import (
    attempts_made,
    delivered_objects,
    first_attempt_at,
    latest_analysis,
    study_state,
)
from dicomnode.store.records import (
    end_round,
    record_delivery_attempt,
    set_delivery_due,
    set_study_state,
    update_analysis,
)

# The pipeline's logger name: these events were always logged under it and log queries select on it.
log = structlog.get_logger("worker.pipeline")


def result_file(settings: Settings, study_uid: str, sop_instance_uid: str) -> Path:
    """Where a result object of the study is stored (written by the pipeline, read by a re-send)."""
    return settings.results_dir / study_uid / f"{sop_instance_uid}.dcm"


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
    sleeping between them. With it, only the first
    :data:`~dicomnode.delivery.retry.INLINE_ATTEMPTS` (or, ``continuing`` a scheduled round, one
    more attempt) are made here; if attempts are left, the study stays ANALYSED with the next retry
    in its reason and ``defer`` schedules the next round after the usual backoff. ``finishing``
    stamps the analysis finished (first delivery); a re-send leaves that stamp alone.
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

    # an urgent finding is announced first; the hook's own retries never hold the DICOM objects
    notify_urgent(settings, store, study_uid, analysis_id)
    policy = RetryPolicy.from_settings(settings)
    made = attempts_made(store, analysis_id) if continuing else {}
    first_at = first_attempt_at(store, analysis_id) if continuing else None
    fallback = fallback or enhanced_sr_fallback
    for ds in datasets:  # the pipeline's results go out as the files it wrote (sender.encoded_file)
        if not getattr(ds, "filename", None):
            stored = result_file(settings, study_uid, str(ds.SOPInstanceUID))
            if stored.is_file():
                ds.filename = str(stored)
    # A re-delivered task (its worker died after sending) must not send a second copy.
    done = delivered_objects(store, study_uid)
    if settings.storage_commitment:  # an object whose commitment failed is delivered again
        done -= uncommitted_objects(store, study_uid)
    all_ok = True
    next_round: float | None = None
    for dest in settings.destinations:
        todo = [ds for ds in datasets if (str(dest), str(ds.SOPInstanceUID)) not in done]
        if not todo:
            log.info("delivery.already_done", study_uid=study_uid, destination=str(dest))
            continue
        first = made.get(str(dest), 0) + 1
        # the first round of a handed-off delivery makes the inline attempts (a PACS that blinked)
        now_attempts = policy.attempts_now(
            first, scheduled=defer is not None, continuing=continuing and first > 1
        )
        if now_attempts == 0:  # this destination's budget is spent
            all_ok = False
            continue
        ok = deliver(
            todo,
            dest,
            calling_ae=settings.ae_title,
            attempts=now_attempts,
            backoff_seconds=policy.backoff_seconds,
            backoff_max_seconds=policy.backoff_max_seconds,
            on_attempt=record,
            fallback=fallback,
            extra_sop_classes=[str(EnhancedSRStorage)],
            first_attempt=first,
            last_attempt=policy.budget,
            connect_timeout=settings.delivery_connect_timeout_seconds,
            attempt_timeout=settings.delivery_attempt_timeout_seconds,
            # a stow+ destination gets one STOW-RS POST per attempt instead of an association
            send=partial(stow_send_once, auth=StowAuth.from_settings(settings))
            if dest.is_stow
            else partial(send_once, keep_open=settings.delivery_idle_release_seconds),
        )
        # STOW-RS has no storage commitment (PS3.18 has none): its answer is the last word
        if ok and settings.storage_commitment and not dest.is_stow:
            # stored; delivered for good once the destination commits (its report comes later)
            ok = (
                request_and_record(
                    store,
                    analysis_id,
                    todo,
                    dest,
                    calling_ae=settings.ae_title,
                    connect_timeout=settings.delivery_connect_timeout_seconds,
                ).transaction_uid
                is not None
            )
        all_ok = all_ok and ok
        elapsed = (utcnow() - first_at).total_seconds() if first_at is not None else 0.0
        wait = None if ok else policy.next_round_in(first + now_attempts - 1, elapsed)
        if wait is not None:
            next_round = wait if next_round is None else min(next_round, wait)
    # finished_at and delivered_at land in one transaction: a reader between the two (a /metrics
    # scrape) would otherwise see a finished analysis that was never delivered
    now = utcnow()
    stamps = {"finished_at": now} if finishing else {}
    has_destinations = bool(settings.destinations)
    if not all_ok and next_round is not None and defer is not None:
        # attempts are left: this worker moves on to the next study; a scheduled round goes on
        state = end_state(has_destinations=has_destinations, all_delivered=False, round_scheduled=True)
        budget = f"{policy.budget} attempts" if policy.budget else f"window {policy.window_seconds:g} s"
        end_round(
            store,
            analysis_id,
            study_uid,
            state,
            f"{DELIVERY_RETRY_REASON} in {next_round:g} s (budget {budget})",
            stamps=stamps,
            only_from=(StudyState.ANALYSING, StudyState.ANALYSED),
            due_at=utcnow() + timedelta(seconds=next_round),
        )
        log.info("delivery.scheduled", study_uid=study_uid, in_seconds=next_round)
        defer(study_uid, analysis_id, next_round)
        return state
    state = end_state(has_destinations=has_destinations, all_delivered=all_ok, round_scheduled=False)
    if state is StudyState.DELIVERED:
        stamps["delivered_at"] = now
    reason = None
    if state is StudyState.DELIVERY_FAILED:
        reason = (
            "retry budget exhausted (DICOMNODE_DELIVERY_WINDOW_SECONDS / DICOMNODE_DELIVERY_ATTEMPTS); "
            f"re-send with `dicomnode resend {study_uid}`"
        )
    end_round(
        store,
        analysis_id,
        study_uid,
        state,
        reason,
        stamps=stamps,
        only_from=(
            StudyState.ANALYSING,
            StudyState.DELIVERY_FAILED,
            StudyState.DELIVERED,
            StudyState.ANALYSED,
        ),
        due_at=None,
    )
    return state


def hand_off(settings: Settings, store: Store, study_uid: str, analysis_id: int, defer: Defer) -> StudyState:
    """The analysis is done: stamp it finished, leave the study ANALYSED with its delivery due now
    and give the delivery to ``defer``, its own unit of work (the embedded runner's delivery
    threads, a Celery delivery task). The analysing worker never waits for a destination; should
    the round be lost on its way, the node's reconciler finds it due and runs it again."""
    update_analysis(store, analysis_id, finished_at=utcnow())
    state = end_state(has_destinations=bool(settings.destinations), all_delivered=False, round_scheduled=True)
    if not settings.destinations:
        set_study_state(store, study_uid, state, only_from=(StudyState.ANALYSING,))
        return state
    set_study_state(
        store,
        study_uid,
        state,
        f"{DELIVERY_RETRY_REASON} now (handed to delivery)",
        only_from=(StudyState.ANALYSING,),
    )
    set_delivery_due(store, study_uid, utcnow())
    log.info("delivery.handed_off", study_uid=study_uid, analysis_id=analysis_id)
    defer(study_uid, analysis_id, 0.0)
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
    # a lease while this round runs: the reconciler takes only a round overdue past it
    lease = settings.delivery_attempt_timeout_seconds * INLINE_ATTEMPTS + settings.reconcile_after_seconds
    set_delivery_due(store, study_uid, utcnow() + timedelta(seconds=lease))
    datasets = read_results(settings, study_uid, a.sr_sop_instance_uid, a.sc_sop_instance_uid)
    return deliver_results(
        settings, store, study_uid, a.id, datasets, finishing=False, defer=defer, continuing=True
    )


def read_results(settings: Settings, study_uid: str, *uids: str | None) -> list[Dataset]:
    """The study's stored result objects with these SOP Instance UIDs, read back from disk."""
    if not all(uids):
        raise LookupError(f"study {study_uid} has no results to send: `dicomnode results` lists what exists")
    datasets: list[Dataset] = []
    for uid in uids:
        path = result_file(settings, study_uid, str(uid))
        if not path.is_file():
            raise FileNotFoundError(f"result file {path} is missing: re-run the analysis instead")
        datasets.append(pydicom.dcmread(path))
    return datasets


def resend(settings: Settings, store: Store, study_uid: str) -> StudyState:
    """Deliver a study's latest results again (after a destination was down past the retries)."""
    a = latest_analysis(store, study_uid)
    if a is None:
        raise LookupError(f"study {study_uid} has no results to send: `dicomnode results` lists what exists")
    datasets = read_results(settings, study_uid, a.sr_sop_instance_uid, a.sc_sop_instance_uid)
    log.info("study.resend", study_uid=study_uid, analysis_id=a.id)
    return deliver_results(settings, store, study_uid, a.id, datasets, finishing=False)


__all__ = ["deliver_results", "hand_off", "read_results", "resend", "result_file", "retry_delivery"]
