"""The node's SQL store: the only room that writes SQL.

:mod:`~dicomnode.store.db` (engine, sessions, alembic migrations), :mod:`~dicomnode.store.models`
(the tables), :mod:`~dicomnode.store.queries` (what the tracker, the pipeline, the CLI and the
worklist ask) and :mod:`~dicomnode.store.records` (what the SCP, the tracker and the pipeline write).
The audit, monitoring and ``/metrics`` questions over the same tables live in :mod:`dicomnode.ops`.
"""

from dicomnode.store import models
from dicomnode.store.db import Store, downgrade, make_engine, migrate
from dicomnode.store.models import StudyState
from dicomnode.store.queries import (
    ResultRow,
    StudyLatest,
    as_utc,
    attempts_made,
    delivered_objects,
    destinations_down,
    due_deliveries,
    instance_by_sop_uid,
    instance_locations,
    instance_path_of,
    latest_analysis,
    latest_analysis_join,
    result_rows,
    stranded_studies,
    studies_awaiting_delivery,
    studies_in_state,
    studies_with_latest_analysis,
    study_instances,
    study_state,
)
from dicomnode.store.records import (
    AnalysisAttemptsExhausted,
    InstanceOutcome,
    InstanceRecord,
    add_event,
    claim_delivery,
    claim_study,
    record_delivery_attempt,
    record_instance,
    record_instances,
    set_delivery_due,
    set_study_state,
    stamp_claimed,
    start_analysis,
    update_analysis,
)

__all__ = [
    "AnalysisAttemptsExhausted",
    "InstanceOutcome",
    "InstanceRecord",
    "ResultRow",
    "Store",
    "StudyLatest",
    "StudyState",
    "add_event",
    "as_utc",
    "attempts_made",
    "claim_delivery",
    "claim_study",
    "delivered_objects",
    "destinations_down",
    "due_deliveries",
    "downgrade",
    "instance_by_sop_uid",
    "instance_locations",
    "instance_path_of",
    "latest_analysis",
    "latest_analysis_join",
    "make_engine",
    "migrate",
    "models",
    "record_delivery_attempt",
    "record_instance",
    "record_instances",
    "result_rows",
    "set_delivery_due",
    "set_study_state",
    "stamp_claimed",
    "start_analysis",
    "stranded_studies",
    "studies_awaiting_delivery",
    "studies_in_state",
    "studies_with_latest_analysis",
    "study_instances",
    "study_state",
    "update_analysis",
]
