"""The database goes away under a receiving node (real PostgreSQL, connections refused and cut).

An instance already answered Success keeps its file and gets its row once the database is back;
while the recorder cannot commit, new instances are refused with 0xA700 (the sender retries) and
nothing is written for them; afterwards the same sender is accepted again and every count adds up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.store.queries import instance_by_sop_uid, study_instances
from dicomnode.testing.phantoms import make_phantom
from tests.conftest import PG_ADMIN_URL
from tests.support import echo_ok, wait_until


def _set_connections(db_url: str, allowed: bool) -> None:
    name = db_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allowed else "false"}'))
            if not allowed:
                c.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                    {"n": name},
                )
    finally:
        admin.dispose()


def test_database_outage_refuses_new_instances_and_loses_none(
    pg_url: str, tmp_path: Path, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    node = node_factory(
        Settings(
            host="127.0.0.1", port=0, storage_dir=tmp_path / "node", quiet_seconds=3600, database_url=pg_url
        )
    )
    study_uid = generate_uid()
    files = []
    for seed in range(3):
        ds = make_phantom(np.random.default_rng(seed), False, study_uid=study_uid, size=64)
        f = tmp_path / f"{seed}.dcm"
        ds.save_as(f, enforce_file_format=True)
        files.append((ds.SOPInstanceUID, f))
    (uid_a, a), (uid_b, b), (uid_c, c) = files
    assert node.store is not None

    [res] = push_files([a], "127.0.0.1", node.port)
    assert res.status == status.SUCCESS and node.flush_records()

    _set_connections(pg_url, allowed=False)
    try:
        # answered Success: the file is durable; its row waits for the database
        [res] = push_files([b], "127.0.0.1", node.port)
        assert res.status == status.SUCCESS
        wait_until(
            lambda: any(e["event"] == "store.db_unavailable" for e in logs), 20, "the outage to be noticed"
        )
        [res] = push_files([c], "127.0.0.1", node.port)
        assert res.status == status.OUT_OF_RESOURCES
        assert not list(node.settings.instances_dir.rglob(f"{uid_c}.dcm")), "a refused instance was kept"
        assert echo_ok(node.port)
    finally:
        _set_connections(pg_url, allowed=True)

    wait_until(lambda: instance_by_sop_uid(node.store, uid_b) is not None, 30, "the waiting row to commit")
    [res] = push_files([c], "127.0.0.1", node.port)  # the sender's retry
    assert res.status == status.SUCCESS and node.flush_records()
    rows = study_instances(node.store, study_uid)
    assert {r.sop_instance_uid for r in rows} == {uid_a, uid_b, uid_c}
    assert all(Path(r.path).is_file() for r in rows)
    with node.store.session() as s:
        count = s.execute(text("SELECT instance_count FROM studies WHERE study_uid = :u"), {"u": study_uid})
        assert count.scalar_one() == 3
