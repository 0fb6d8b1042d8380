"""SQL schema: studies, instances, analyses, delivery attempts and an append-only event log.

Every change to this file needs an alembic revision in ``migrations/versions``.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)


def utcnow() -> datetime:
    """Timezone-aware now; all timestamps in the store are UTC."""
    return datetime.now(timezone.utc)


class StudyState(str, enum.Enum):
    """Where a study is in the flow. Transitions only move forward, except a late instance
    re-opens an analysed study (RECEIVING) so it is analysed again with everything."""

    RECEIVING = "receiving"
    COMPLETE = "complete"  # quiet period passed, handed to the task runner
    ANALYSING = "analysing"
    ANALYSED = "analysed"  # results built; delivery pending or partial
    DELIVERED = "delivered"  # every destination accepted every result object
    DELIVERY_FAILED = "delivery_failed"  # retries exhausted for at least one destination
    NOT_APPLICABLE = "not_applicable"  # nothing the model can read (reason recorded)
    FAILED = "failed"  # the analysis raised (reason recorded)


#: How an ANALYSED study's state reason starts while its next delivery round is scheduled.
DELIVERY_RETRY_REASON = "delivery retry scheduled"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    state: Mapped[str] = mapped_column(String(32), default=StudyState.RECEIVING.value, index=True)
    state_reason: Mapped[str | None] = mapped_column(Text)
    calling_ae: Mapped[str | None] = mapped_column(String(16), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(16))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: when the study was last handed to a task runner or started by a worker: the reconciler's
    #: lease (:mod:`dicomnode.receive.reconcile`), moved on only by a conditional UPDATE
    claimed_at: Mapped[datetime | None]
    #: analyses started and not finished since the last one that finished (revision 0004)
    analysis_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: when the next delivery round of the latest analysis is due (None: none pending)
    delivery_due_at: Mapped[datetime | None] = mapped_column(index=True)
    #: when retention deleted the study's instance files (revision 0005; the rows stay)
    purged_at: Mapped[datetime | None] = mapped_column(index=True)

    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    analyses: Mapped[list[Analysis]] = relationship(back_populates="study")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # filled after receipt (dicomnode.receive.fingerprint)
    sha256: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: revision 0005: retention deleted the file / the start-up re-scan found it gone (logged once)
    purged_at: Mapped[datetime | None]
    missing_at: Mapped[datetime | None]

    study: Mapped[Study] = relationship(back_populates="instances")


class Analysis(Base):
    __tablename__ = "analyses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    score: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    finding_present: Mapped[bool | None] = mapped_column(Boolean)
    priority: Mapped[str | None] = mapped_column(String(16))
    instances_analysed: Mapped[int] = mapped_column(Integer, default=0)
    #: per-instance selection decisions: [{"sop_instance_uid", "selected", "reason"}]
    selection: Mapped[list | None] = mapped_column(JSON)
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    sc_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    error: Mapped[str | None] = mapped_column(Text)
    execution: Mapped[str | None] = mapped_column(String(32))  # inprocess | celery:<hostname>
    # per-stage timestamps (UTC)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    preprocessed_at: Mapped[datetime | None]
    inferred_at: Mapped[datetime | None]
    results_built_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    #: revision 0005: when retention deleted the SR and SC files (the row stays)
    results_purged_at: Mapped[datetime | None]

    study: Mapped[Study] = relationship(back_populates="analyses")
    deliveries: Mapped[list[DeliveryAttempt]] = relationship(back_populates="analysis")


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    attempt: Mapped[int] = mapped_column(Integer)
    success: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[int | None] = mapped_column(Integer)  # DIMSE status, None if no association
    error: Mapped[str | None] = mapped_column(Text)
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)

    analysis: Mapped[Analysis] = relationship(back_populates="deliveries")


class Commitment(Base):
    """One result object in one Storage Commitment request to one destination (PS3.4 J.3).

    ``committed_at`` is set when the destination's report lists the object as committed;
    ``failed_reason`` when it lists it as failed or no report came within
    ``DICOMNODE_STORAGE_COMMITMENT_TIMEOUT_SECONDS`` (the object is then delivered again)."""

    __tablename__ = "commitments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    transaction_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    committed_at: Mapped[datetime | None] = mapped_column()
    failed_at: Mapped[datetime | None] = mapped_column()
    failed_reason: Mapped[str | None] = mapped_column(Text)


class NotificationState(str, enum.Enum):
    """Where an urgent-finding notification (:mod:`dicomnode.delivery.hook`) is."""

    PENDING = "pending"  # not yet accepted; next attempt at ``next_attempt_at``
    DELIVERED = "delivered"  # the URL answered 2xx
    FAILED = "failed"  # the retry window passed without a 2xx (``last_error`` says why)


class Notification(Base):
    """One urgent-finding HTTP POST of one analysis to one URL (revision 0007); each attempt is
    also an event (``notification.attempt``)."""

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("analysis_id", "url", name="uq_notifications_analysis_id_url"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id"), index=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    url: Mapped[str] = mapped_column(Text)
    #: the JSON body, fixed when the notification is created so every retry sends the same
    payload: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=NotificationState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: when the next attempt is due (None once delivered or failed); also the lease of an attempt
    next_attempt_at: Mapped[datetime | None]
    first_attempt_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    #: the latest failed attempt: ``HTTP 500`` or the exception type and text (no payload)
    last_error: Mapped[str | None] = mapped_column(Text)


class Event(Base):
    """Append-only audit log: one row per thing that happened, never updated."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    study_uid: Mapped[str | None] = mapped_column(UID, index=True)
    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict | None] = mapped_column(JSON)


class GroundTruth(Base):
    """A radiologist's read of a study, imported from CSV (``dicomnode import-truth``): the
    reference for real-world sensitivity, specificity, PPV and NPV (:mod:`dicomnode.ops.performance`)."""

    __tablename__ = "ground_truth"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    label: Mapped[bool] = mapped_column(Boolean)  # True: pneumonia present
    reader: Mapped[str | None] = mapped_column(String(64))
    read_at: Mapped[datetime | None]
    source: Mapped[str | None] = mapped_column(Text)  # "<file name>:<line>" it was imported from
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship()


# Composite indexes of revision 0002: each question of `dicomnode audit`, `dicomnode monitor` and
# the /metrics scrape reads an index range instead of scanning a table (docs/sizing.md has timings).
Index("ix_studies_accession_number", Study.accession_number)
Index("ix_studies_calling_ae_first_received_at", Study.calling_ae, Study.first_received_at)
Index("ix_studies_state_first_received_at", Study.state, Study.first_received_at)
Index("ix_analyses_study_id_id", Analysis.study_id, Analysis.id)
Index("ix_analyses_finished_at", Analysis.finished_at)
Index("ix_analyses_delivered_at", Analysis.delivered_at)  # revision 0004: /metrics reads by delivery
Index("ix_analyses_model_version_finished_at", Analysis.model_version, Analysis.finished_at)
Index("ix_delivery_attempts_success_attempted_at", DeliveryAttempt.success, DeliveryAttempt.attempted_at)
Index("ix_events_kind_at", Event.kind, Event.at)
Index("ix_notifications_state_next_attempt_at", Notification.state, Notification.next_attempt_at)  # 0007
