"""Issue 13: the start-up re-scan runs after the port opens, on its own thread, in batches.

A storage folder of 20,000 recorded instances (small files and bulk SQL inserts, as
``test_retention_drill.py`` makes them: the re-scan looks at paths, ages and rows, not pixels), one
row whose file is gone and three whole files a crash left unrecorded. The node answers a C-ECHO and
takes C-STOREs (a new instance, and a re-send of one of the crash leftovers) while the re-scan is
still going: shown by the order of the log events, not by timing. Afterwards every instance has
exactly one row, nothing received live is flagged missing or recovered, the leftovers are recorded
and their study is handed on to analysis.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from sqlalchemy import func, insert, select

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.storage import instance_path
from dicomnode.store.db import Store
from dicomnode.store.models import Event, Instance, Study, StudyState, utcnow
from dicomnode.testing.phantoms import make_phantom
from tests.integration.test_receive_rescan import RecordingRunner
from tests.support import echo_ok, wait_until

N_STUDIES, PER_STUDY = 200, 100  # 20,000 recorded instances: 20 batches of the re-scan
ROOT = "1.2.826.0.1.3680043.10.1439.13"  # test UIDs: <root>.<kind>.<n>


def _make_recorded(settings: Settings, store: Store) -> None:
    """``N_STUDIES * PER_STUDY`` delivered instances with their files, plus one row without a file."""
    at = utcnow() - timedelta(days=1)
    studies, instances = [], []
    for i in range(1, N_STUDIES + 1):
        study_uid, series_uid = f"{ROOT}.1.{i}", f"{ROOT}.2.{i}"
        studies.append(
            dict(
                study_uid=study_uid,
                state=StudyState.DELIVERED.value,
                instance_count=PER_STUDY + (i == 1),
                first_received_at=at,
                last_received_at=at,
                completed_at=at,
                updated_at=at,
            )
        )
        for j in range(PER_STUDY + (i == 1)):  # study 1 has one more row, whose file is gone
            sop_uid = f"{ROOT}.3.{i}.{j}"
            path = instance_path(settings.instances_dir, study_uid, series_uid, sop_uid)
            if j < PER_STUDY:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\0" * 128)
            instances.append(
                dict(
                    study_id=study_uid,  # replaced by the row's id once the studies are in
                    sop_instance_uid=sop_uid,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                    series_uid=series_uid,
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    path=str(path.resolve()),
                    size_bytes=128,
                    sha256="0" * 64,
                    received_at=at,
                )
            )
    with store.engine.begin() as conn:  # ids from the database: its sequences stay right
        conn.execute(insert(Study), studies)
        ids = {uid: sid for uid, sid in conn.execute(select(Study.study_uid, Study.id))}
        conn.execute(insert(Instance), [{**row, "study_id": ids[row["study_id"]]} for row in instances])


def _count(store: Store, stmt: Any) -> int:
    with store.session() as s:
        return int(s.scalar(stmt) or 0)


def _events(store: Store, *kinds: str) -> list[Event]:
    with store.session() as s:
        return list(s.scalars(select(Event).where(Event.kind.in_(kinds)).order_by(Event.id)))


def test_port_serves_while_a_large_rescan_runs_and_nothing_is_recorded_twice(
    tmp_path: Path, db_url: str, logs: list[dict[str, Any]]
) -> None:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        storage_dir=tmp_path / "node",
        quiet_seconds=0.5,
        fsync=False,
        database_url=db_url,
    )
    store = Store(settings.effective_database_url)
    try:
        _make_recorded(settings, store)
    finally:
        store.dispose()
    # a crash between rename and commit: three whole files in place, no rows; the first is re-sent,
    # the other two (one study) only the re-scan finds
    rng = np.random.default_rng(13)
    leftovers = [make_phantom(rng, True, size=32) for _ in range(3)]
    only_on_disk = leftovers[1]
    leftovers[2].StudyInstanceUID = only_on_disk.StudyInstanceUID
    leftovers[2].SeriesInstanceUID = only_on_disk.SeriesInstanceUID
    for ds in leftovers:
        p = instance_path(
            settings.instances_dir, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(p, enforce_file_format=True)
    resend = tmp_path / "resend.dcm"  # the sender re-sends the one it never got Success for
    leftovers[0].save_as(resend, enforce_file_format=True)
    new = make_phantom(np.random.default_rng(14), False, size=32)
    new_file = tmp_path / "new.dcm"
    new.save_as(new_file, enforce_file_format=True)

    runner = RecordingRunner()
    node = Node(settings, runner.factory).start()
    test_log = structlog.get_logger("tests.rescan")
    try:
        assert echo_ok(node.port)
        test_log.info("test.echo_answered")
        assert [r.status for r in push_files([new_file, resend], "127.0.0.1", node.port)] == [
            status.SUCCESS,
            status.SUCCESS,
        ]
        test_log.info("test.stores_answered")
        report = node.wait_rescan(120)
        assert report is not None and report.complete
        order = [e["event"] for e in logs]
        # the port opened before the re-scan began, and served while it ran
        assert order.index("node.started") < order.index("test.echo_answered")
        assert (
            order.index("test.stores_answered") < order.index("rescan.done") < order.index("node.rescan_done")
        )

        assert node.store is not None and node.flush_records()
        print(
            f"\nrescan of {report.files} files, {report.rows} rows: {report.seconds:.2f} s (after the port opened)"
        )
        assert report.rows == N_STUDIES * PER_STUDY + 1  # what SQL held at start, nothing newer
        assert (report.missing, report.unreadable, report.superseded, report.quarantined) == (1, 0, 0, 0)
        assert report.recorded in (2, 3)  # the re-sent leftover: the handler's or the re-scan's
        for ds in [*leftovers, new]:  # exactly one row each, none flagged
            rows = _count(
                node.store,
                select(func.count(Instance.id)).where(
                    Instance.sop_instance_uid == ds.SOPInstanceUID, Instance.missing_at.is_(None)
                ),
            )
            assert rows == 1, ds.SOPInstanceUID
        [missing] = _events(node.store, "instance.file_missing")
        assert (missing.detail or {})["sop_instance_uid"] == f"{ROOT}.3.1.{PER_STUDY}"
        recovered = {(e.detail or {})["sop_instance_uid"] for e in _events(node.store, "instance.recovered")}
        assert new.SOPInstanceUID not in recovered
        assert {ds.SOPInstanceUID for ds in leftovers[1:]} <= recovered
        kinds = [e.kind for e in _events(node.store, "node.started", "node.rescan_done")]
        assert kinds == ["node.started", "node.rescan_done"]
        # the crash leftovers' study goes on to analysis after its quiet period (the tracker has it)
        wait_until(
            lambda: only_on_disk.StudyInstanceUID in runner.submitted, 10, "the leftovers' study dispatched"
        )
        assert new.StudyInstanceUID in runner.submitted
    finally:
        node.stop()
