"""Several modalities sending at once: every instance stored once, every count right.

Senders push different studies, and two senders share each study (a study split across
associations, so both race to create its row), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicomnode.config import Settings
from dicomnode.delivery.push import PushResult, push_files
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.store.models import Instance, Study
from dicomnode.testing.phantoms import make_phantom

STUDIES, SENDERS_PER_STUDY, INSTANCES_PER_SENDER = 3, 2, 8


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Empty (SQLite under the storage folder) or a fresh PostgreSQL database."""
    return str(request.getfixturevalue("pg_url")) if request.param == "postgresql" else ""


def test_simultaneous_senders_all_stored_and_counted(
    database_url: str, tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = node_factory(
        Settings(
            host="127.0.0.1",
            port=0,
            storage_dir=tmp_path / "node",
            quiet_seconds=3600,
            database_url=database_url,
        )
    )
    rng = np.random.default_rng(51)
    batches: list[list[Path]] = []
    study_uids = [generate_uid() for _ in range(STUDIES)]
    for study_uid in study_uids:
        for _ in range(SENDERS_PER_STUDY):
            batch = []
            for _ in range(INSTANCES_PER_SENDER):
                ds = make_phantom(rng, False, study_uid=study_uid, size=64)
                f = tmp_path / "in" / f"{ds.SOPInstanceUID}.dcm"
                f.parent.mkdir(exist_ok=True)
                ds.save_as(f, enforce_file_format=True)
                batch.append(f)
            batches.append(batch)

    results: list[list[PushResult]] = [[] for _ in batches]
    start = threading.Barrier(len(batches))

    def send(i: int) -> None:
        start.wait()
        results[i] = push_files(batches[i], "127.0.0.1", node.port, calling_ae=f"MOD{i:02d}")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    statuses = [r.status for rs in results for r in rs]
    total = STUDIES * SENDERS_PER_STUDY * INSTANCES_PER_SENDER
    assert statuses == [status.SUCCESS] * total
    assert len(list(node.settings.instances_dir.rglob("*.dcm"))) == total
    assert node.store is not None and node.flush_records()
    with node.store.session() as s:
        counts = dict(s.execute(select(Study.study_uid, Study.instance_count)).all())
        rows = s.scalar(select(func.count(Instance.id)))
    assert counts == {uid: SENDERS_PER_STUDY * INSTANCES_PER_SENDER for uid in study_uids}
    assert rows == total
