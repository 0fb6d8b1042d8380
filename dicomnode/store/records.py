"""Write side of the store: what the SCP, the tracker and the pipeline record.

Each function takes a :class:`~dicomnode.store.db.Store` and commits its own transaction; where one
step writes several things (:func:`end_analysis`), they share it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, DeliveryAttempt, Event, Instance, Study, StudyState, utcnow
from dicomnode.store.queries import study_state


def add_event(store: Store, kind: str, study_uid: str | None = None, **detail: Any) -> None:
    """Append one row to the audit log (never patient data in ``detail``)."""
    with store.session() as s:
        s.add(Event(kind=kind, study_uid=study_uid, detail=detail or None))


@dataclass(frozen=True)
class InstanceRecord:
    """One received instance as the SCP saw it."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    path: str
    size_bytes: int
    sha256: str | None
    calling_ae: str | None
    accession_number: str | None = None
    #: header attributes whose value SQL could not hold, stored as NULL (:func:`fit_to_columns`)
    dropped: tuple[str, ...] = ()
    #: why this instance must not re-open a study that has left RECEIVING (the node's own result,
    #: an object the model does not read, a re-send of the same data set), or None: it may
    #: (:mod:`dicomnode.receive.provenance`; recorded as an ``instance.not_reopening`` event)
    passive: str | None = None


#: The free-text header values of a record, each with the SQL column that holds it. A value its
#: column cannot hold (too long, or with a NUL, which PostgreSQL refuses in any text) would fail
#: the row on one database and not another, after the sender was told Success.
_TEXT_COLUMNS = {
    "modality": ("Modality", Instance.__table__.c.modality),
    "accession_number": ("AccessionNumber", Study.__table__.c.accession_number),
    "calling_ae": ("CallingAETitle", Instance.__table__.c.calling_ae),
}


def fit_to_columns(rec: InstanceRecord) -> InstanceRecord:
    """``rec`` with every free-text value its SQL column cannot hold set to None, the attribute
    names added to :attr:`InstanceRecord.dropped` (the value itself is never logged or recorded).

    NULL rather than a truncated value: a cut Accession Number could name another patient's
    study. The instance itself is kept as sent. UIDs are not touched here: the header parse
    refuses one that is not valid (:func:`dicomnode.storage.normalise_uid`)."""
    changes: dict[str, Any] = {}
    for field_name, (attribute, column) in _TEXT_COLUMNS.items():
        value = getattr(rec, field_name)
        if value is None:
            continue
        length = getattr(column.type, "length", None)
        if "\x00" in value or (length is not None and len(value) > length):
            changes[field_name] = None
            changes.setdefault("dropped", rec.dropped)
            if attribute not in changes["dropped"]:
                changes["dropped"] += (attribute,)
    return replace(rec, **changes) if changes else rec


@dataclass(frozen=True)
class InstanceOutcome:
    duplicate: bool  # the SOP Instance UID was already stored (file overwritten, row updated)
    reopened: bool  # the study had been handed on and a late instance re-opened it
    previous_path: str | None = None  # for a duplicate: where the row pointed before


def record_instance(store: Store, rec: InstanceRecord) -> InstanceOutcome:
    """Upsert the study and the instance; re-open a study that already left RECEIVING."""
    for attempt in range(3):
        try:
            return _record_instance(store, rec)
        except IntegrityError:  # two associations created the same study or instance at once: retry
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# A declarative model's __table__ is a Table; SQLAlchemy types it as the wider FromClause.
_STUDIES = cast(Table, Study.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_EVENTS = cast(Table, Event.__table__)


def _instance_values(rec: InstanceRecord, study_id: int, now: datetime) -> dict[str, Any]:
    """The columns of an instance row other than its SOP Instance UID."""
    return dict(
        study_id=study_id,
        sop_class_uid=rec.sop_class_uid,
        series_uid=rec.series_uid,
        transfer_syntax_uid=rec.transfer_syntax_uid,
        modality=rec.modality,
        path=rec.path,
        size_bytes=rec.size_bytes,
        sha256=rec.sha256,
        calling_ae=rec.calling_ae,
        received_at=now,
    )


def record_instances(store: Store, recs: list[InstanceRecord]) -> list[InstanceOutcome]:
    """Record several instances in one transaction (the SCP's recorder thread, in batches).

    The common case, new instances of a new study or of one already receiving, costs a fixed
    handful of statements whatever the batch size: one SELECT of the studies, one of the
    instances, one INSERT per new study, one multi-row INSERT and one UPDATE per study.
    Duplicates and re-opened studies take the one-at-a-time path."""
    recs = [fit_to_columns(r) for r in recs]
    with store.engine.begin() as conn:
        _record_dropped_values(conn, recs)
        uids = [r.sop_instance_uid for r in recs]
        if len(recs) == 1 or len(set(uids)) != len(uids):  # the same instance twice: in order
            return [_record_instance_in(conn, rec) for rec in recs]
        existing = set(
            conn.execute(
                select(_INSTANCES.c.sop_instance_uid).where(_INSTANCES.c.sop_instance_uid.in_(uids))
            ).scalars()
        )
        study_uids = {r.study_uid for r in recs}
        known = {
            row.study_uid: (row.id, row.state)
            for row in conn.execute(
                select(_STUDIES.c.id, _STUDIES.c.study_uid, _STUDIES.c.state).where(
                    _STUDIES.c.study_uid.in_(study_uids)
                )
            )
        }
        now = utcnow()
        for rec in recs:  # the first instances of a new study: its row, then the batch path
            if rec.study_uid not in known:
                known[rec.study_uid] = (_insert_study(conn, rec, now), StudyState.RECEIVING.value)
        receiving = {uid: sid for uid, (sid, state) in known.items() if state == StudyState.RECEIVING.value}
        fresh = [r for r in recs if r.sop_instance_uid not in existing and r.study_uid in receiving]
        if fresh:
            conn.execute(
                insert(_INSTANCES),
                [
                    dict(
                        sop_instance_uid=r.sop_instance_uid,
                        **_instance_values(r, receiving[r.study_uid], now),
                    )
                    for r in fresh
                ],
            )
            per_study: dict[int, int] = {}
            for r in fresh:
                per_study[receiving[r.study_uid]] = per_study.get(receiving[r.study_uid], 0) + 1
            for study_id, n in per_study.items():
                conn.execute(
                    update(_STUDIES)
                    .where(_STUDIES.c.id == study_id)
                    .values(
                        instance_count=_STUDIES.c.instance_count + n, last_received_at=now, updated_at=now
                    )
                )
        fresh_ids = {id(r) for r in fresh}
        return [
            InstanceOutcome(duplicate=False, reopened=False)
            if id(r) in fresh_ids
            else _record_instance_in(conn, r)
            for r in recs
        ]


def _record_instance(store: Store, rec: InstanceRecord) -> InstanceOutcome:
    rec = fit_to_columns(rec)
    with store.engine.begin() as conn:
        _record_dropped_values(conn, [rec])
        return _record_instance_in(conn, rec)


def _record_dropped_values(conn: Connection, recs: list[InstanceRecord]) -> None:
    """One ``instance.header_value_dropped`` event per record whose values SQL could not hold,
    in the transaction of its row: the attribute names only, never the values."""
    rows = [
        dict(
            at=utcnow(),
            kind="instance.header_value_dropped",
            study_uid=r.study_uid,
            detail={"sop_instance_uid": r.sop_instance_uid, "attributes": list(r.dropped)},
        )
        for r in recs
        if r.dropped
    ]
    if rows:
        conn.execute(insert(_EVENTS), rows)


def _insert_study(conn: Connection, rec: InstanceRecord, now: datetime) -> int:
    """A new study row, receiving, from its first instance; its ID."""
    inserted = conn.execute(
        insert(_STUDIES).values(
            study_uid=rec.study_uid,
            calling_ae=rec.calling_ae,
            accession_number=(rec.accession_number or None),
            first_received_at=now,
            last_received_at=now,
            state=StudyState.RECEIVING.value,
            instance_count=0,
        )
    ).inserted_primary_key
    assert inserted is not None  # a single-row insert into a table with an integer key
    return int(inserted[0])


def _record_instance_in(conn: Connection, rec: InstanceRecord) -> InstanceOutcome:
    # SQLAlchemy Core, not the ORM: this runs once per received instance (the ORM's unit-of-work
    # overhead per row is measured in docs/sizing.md). Counts change in SQL (instance_count + 1),
    # never read-modify-write, so concurrent writers lose nothing.
    now = utcnow()
    receiving = StudyState.RECEIVING.value
    study = conn.execute(
        select(_STUDIES.c.id, _STUDIES.c.state).where(_STUDIES.c.study_uid == rec.study_uid)
    ).first()
    if study is None:
        study_id, reopened = _insert_study(conn, rec, now), False
    else:
        study_id, reopened = study.id, study.state != receiving and rec.passive is None
        if study.state != receiving and rec.passive is not None:  # no feedback loop with the PACS
            conn.execute(
                insert(_EVENTS).values(
                    at=now,
                    kind="instance.not_reopening",
                    study_uid=rec.study_uid,
                    detail={
                        "sop_instance_uid": rec.sop_instance_uid,
                        "state": study.state,
                        "reason": rec.passive,
                    },
                )
            )
    old = conn.execute(
        select(_INSTANCES.c.id, _INSTANCES.c.study_id, _INSTANCES.c.path).where(
            _INSTANCES.c.sop_instance_uid == rec.sop_instance_uid
        )
    ).first()
    values = _instance_values(rec, study_id, now)
    study_values: dict[str, Any] = {"last_received_at": now, "updated_at": now}
    if old is None:
        conn.execute(insert(_INSTANCES).values(sop_instance_uid=rec.sop_instance_uid, **values))
        study_values["instance_count"] = _STUDIES.c.instance_count + 1
    else:
        conn.execute(update(_INSTANCES).where(_INSTANCES.c.id == old.id).values(**values))
        if old.study_id != study_id:  # re-sent under a corrected Study Instance UID: move it
            conn.execute(
                update(_STUDIES)
                .where(_STUDIES.c.id == old.study_id, _STUDIES.c.instance_count > 0)
                .values(instance_count=_STUDIES.c.instance_count - 1)
            )
            study_values["instance_count"] = _STUDIES.c.instance_count + 1
    if reopened:
        study_values.update(state=receiving, state_reason=None, analysis_attempts=0, delivery_due_at=None)
    conn.execute(update(_STUDIES).where(_STUDIES.c.id == study_id).values(**study_values))
    if old is not None or reopened:
        conn.execute(
            insert(_EVENTS).values(
                at=now,
                kind="instance.duplicate" if old is not None else "study.reopened",
                study_uid=rec.study_uid,
                detail={"sop_instance_uid": rec.sop_instance_uid},
            )
        )
    return InstanceOutcome(
        duplicate=old is not None, reopened=reopened, previous_path=old.path if old is not None else None
    )


def set_study_state(
    store: Store,
    study_uid: str,
    state: StudyState,
    reason: str | None = None,
    *,
    only_from: tuple[StudyState, ...] = (),
    reset_attempts: bool = False,
) -> bool:
    """Move a study to ``state`` (optionally only from given states); True if a row changed.

    ``reset_attempts``: the study's analysis attempts start again from 0 (an operator asked for a
    fresh analysis of a study that had used them up)."""
    with store.session() as s:
        return _set_study_state_in(
            s, study_uid, state, reason, only_from=only_from, reset_attempts=reset_attempts
        )


def _set_study_state_in(
    s: Session,
    study_uid: str,
    state: StudyState,
    reason: str | None,
    *,
    only_from: tuple[StudyState, ...] = (),
    reset_attempts: bool = False,
) -> bool:
    values: dict[str, Any] = {"state": state.value, "state_reason": reason, "updated_at": utcnow()}
    if reset_attempts:
        values["analysis_attempts"] = 0
    if state is StudyState.COMPLETE:
        values["completed_at"] = utcnow()
    stmt = update(Study).where(Study.study_uid == study_uid)
    if only_from:
        stmt = stmt.where(Study.state.in_([x.value for x in only_from]))
    # an UPDATE returns a CursorResult; Session.execute is typed as the generic Result
    changed = cast(CursorResult[Any], s.execute(stmt.values(**values))).rowcount > 0
    if changed:
        s.add(
            Event(
                kind=f"study.{state.value}",
                study_uid=study_uid,
                detail={"reason": reason} if reason else None,
            )
        )
    return changed


#: States a study can be put back for analysis from (:func:`request_reanalysis`): its analysis has
#: ended. One still receiving, complete or analysing is on its way already.
REANALYSABLE = (
    StudyState.ANALYSED,
    StudyState.DELIVERED,
    StudyState.DELIVERY_FAILED,
    StudyState.NOT_APPLICABLE,
    StudyState.FAILED,
)
REANALYSE_REASON = "reanalyse requested (dicomnode reanalyse)"


def request_reanalysis(store: Store, study_uid: str) -> tuple[bool, StudyState | None]:
    """Move one finished study back to COMPLETE with its events, its analysis attempts from 0;
    (moved, the state it was in)."""
    before = study_state(store, study_uid)
    if before not in REANALYSABLE:
        return False, before
    # only_from: a study that moved on meanwhile (re-opened by a new instance) is left to the node
    if not set_study_state(
        store, study_uid, StudyState.COMPLETE, REANALYSE_REASON, only_from=REANALYSABLE, reset_attempts=True
    ):
        return False, study_state(store, study_uid)
    add_event(store, "study.reanalyse_requested", study_uid, previous_state=before.value if before else None)
    return True, before


class AnalysisAttemptsExhausted(RuntimeError):
    """A study was started ``max_attempts`` times without an analysis finishing (a worker killed
    each time, by the OOM killer say): it is now FAILED with this message as its reason."""


def attempts_exhausted_reason(attempts: int) -> str:
    """The state reason of a study that :class:`AnalysisAttemptsExhausted` failed."""
    return (
        f"analysis started {attempts} times without finishing (worker killed?): the worker log "
        "says why; fix the cause, then re-send the study to analyse it again"
    )


def start_analysis(
    store: Store,
    study_uid: str,
    *,
    model_name: str,
    model_version: str,
    queued_at: datetime | None,
    execution: str,
    max_attempts: int = 0,
) -> int:
    """Create the analysis row for a study and mark the study ANALYSING; returns the row id.

    The study's ``analysis_attempts`` goes up in the same transaction. With ``max_attempts`` (0:
    no limit), a study already started that many times without an analysis finishing is marked
    FAILED instead and :class:`AnalysisAttemptsExhausted` raised: a study that kills every worker
    that takes it (acks_late re-queues it, a restart re-dispatches it) stops looping.
    """
    with store.session() as s:
        study = s.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            raise LookupError(f"study {study_uid} is not in the store: was it received by this node?")
        now = utcnow()
        started = study.analysis_attempts or 0
        if max_attempts and started >= max_attempts:
            reason = attempts_exhausted_reason(started)
            study.state = StudyState.FAILED.value
            study.state_reason = reason
            study.delivery_due_at = None
            s.add(Event(kind="study.failed", study_uid=study_uid, detail={"reason": reason}))
            s.commit()
            raise AnalysisAttemptsExhausted(reason)
        # in SQL, not read-modify-write: two workers starting the same study both count
        s.execute(
            update(Study)
            .where(Study.id == study.id)
            .values(
                analysis_attempts=Study.analysis_attempts + 1,
                state=StudyState.ANALYSING.value,
                claimed_at=now,
                delivery_due_at=None,
                updated_at=now,
            )
        )
        a = Analysis(
            study_id=study.id,
            model_name=model_name,
            model_version=model_version,
            queued_at=queued_at,
            started_at=now,
            execution=execution,
        )
        s.add(a)
        s.flush()
        s.add(
            Event(
                kind="analysis.started",
                study_uid=study_uid,
                detail={"model_version": model_version, "execution": execution, "attempt": started + 1},
            )
        )
        return a.id


def update_analysis(store: Store, analysis_id: int, **values: Any) -> None:
    """Set columns of an analysis row (scores, timestamps, result UIDs, error)."""
    with store.session() as s:
        _update_analysis_in(s, analysis_id, values)


def end_analysis(
    store: Store, analysis_id: int, study_uid: str, state: StudyState, reason: str, **values: Any
) -> None:
    """An analysis that ends without results, in one transaction: its row gets ``values`` (with
    ``finished_at``, ``error``), and the study ``state`` (FAILED, NOT_APPLICABLE) with ``reason``."""
    with store.session() as s:
        _update_analysis_in(s, analysis_id, values)
        _set_study_state_in(s, study_uid, state, reason)


def _update_analysis_in(s: Session, analysis_id: int, values: dict[str, Any]) -> None:
    s.execute(update(Analysis).where(Analysis.id == analysis_id).values(**values))
    if values.get("finished_at") is not None:  # it finished: the attempt counter starts over
        study_id = select(Analysis.study_id).where(Analysis.id == analysis_id).scalar_subquery()
        s.execute(update(Study).where(Study.id == study_id).values(analysis_attempts=0))


def record_delivery_attempt(
    store: Store,
    analysis_id: int,
    *,
    destination: str,
    sop_instance_uid: str,
    attempt: int,
    success: bool,
    status: int | None,
    error: str | None,
) -> None:
    """One C-STORE attempt of one result object to one destination."""
    with store.session() as s:
        s.add(
            DeliveryAttempt(
                analysis_id=analysis_id,
                destination=destination,
                sop_instance_uid=sop_instance_uid,
                attempt=attempt,
                success=success,
                status=status,
                error=error,
            )
        )


def claim_study(
    store: Store,
    study_uid: str,
    states: tuple[StudyState, ...],
    *,
    stale_before: datetime,
    seen_claimed_at: datetime | None,
    now: datetime | None = None,
) -> bool:
    """Take the reconciler's lease on a study: True for exactly one caller.

    One conditional UPDATE moves ``claimed_at`` to now, only while the study is still in one of
    ``states`` and its stamp is the one the caller saw (``seen_claimed_at``) and older than
    ``stale_before``; two reconciler passes (or two nodes on one database) racing for the same
    study find one row changed between them."""
    now = now or utcnow()
    stmt = update(Study).where(Study.study_uid == study_uid, Study.state.in_([x.value for x in states]))
    if seen_claimed_at is None:
        stmt = stmt.where(Study.claimed_at.is_(None))
    else:
        stmt = stmt.where(Study.claimed_at == seen_claimed_at, Study.claimed_at < stale_before)
    with store.session() as s:
        return cast(CursorResult[Any], s.execute(stmt.values(claimed_at=now))).rowcount > 0


def claim_delivery(
    store: Store, study_uid: str, *, seen_due_at: datetime, lease_seconds: float, now: datetime | None = None
) -> bool:
    """Take an overdue delivery round of a study: True for exactly one caller, which moves
    ``delivery_due_at`` on by ``lease_seconds`` (the round it runs sets the next one)."""
    from datetime import timedelta

    with store.session() as s:
        stmt = (
            update(Study)
            .where(
                Study.study_uid == study_uid,
                Study.state == StudyState.ANALYSED.value,
                Study.delivery_due_at == seen_due_at,
            )
            .values(delivery_due_at=(now or utcnow()) + timedelta(seconds=lease_seconds))
        )
        return cast(CursorResult[Any], s.execute(stmt)).rowcount > 0


def stamp_claimed(store: Store, study_uid: str) -> None:
    """The study was handed to a task runner now (the reconciler waits a while before it does so
    again)."""
    with store.session() as s:
        s.execute(update(Study).where(Study.study_uid == study_uid).values(claimed_at=utcnow()))


def set_delivery_due(store: Store, study_uid: str, due_at: datetime | None) -> None:
    """When the next delivery round of the study is due (None: no round pending)."""
    with store.session() as s:
        s.execute(update(Study).where(Study.study_uid == study_uid).values(delivery_due_at=due_at))


def end_round(
    store: Store,
    analysis_id: int,
    study_uid: str,
    state: StudyState,
    reason: str | None,
    *,
    stamps: dict[str, Any],
    only_from: tuple[StudyState, ...],
    due_at: datetime | None,
) -> None:
    """The end of a delivery round in one transaction: the analysis ``stamps`` (finished,
    delivered), the study's ``state`` (from ``only_from``) and when its next round is due."""
    with store.session() as s:
        if stamps:
            _update_analysis_in(s, analysis_id, stamps)
        _set_study_state_in(s, study_uid, state, reason, only_from=only_from)
        s.execute(update(Study).where(Study.study_uid == study_uid).values(delivery_due_at=due_at))


def make_deliveries_due(store: Store, study_uids: list[str]) -> int:
    """Bring the pending delivery rounds of these studies forward to now (a destination answers
    again); the number of studies changed."""
    if not study_uids:
        return 0
    with store.session() as s:
        stmt = (
            update(Study)
            .where(Study.study_uid.in_(study_uids), Study.state == StudyState.ANALYSED.value)
            .values(delivery_due_at=utcnow())
        )
        return cast(CursorResult[Any], s.execute(stmt)).rowcount
