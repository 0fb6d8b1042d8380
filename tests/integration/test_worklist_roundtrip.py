"""Round trip of the reading order: studies -> node -> SRs at the PACS -> ``dicomnode worklist``.

The worklist is built twice, from the SRs the PACS received (``--sr-dir``, as another site would)
and from the node's SQL record, and both must agree with what each SR says. The order is checked
against the SRs' priorities, not the phantoms' ground truth: the model decides the band.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from pydicom.uid import Comprehensive3DSRStorage
from sqlalchemy import update

from dicomnode import cli
from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.results import Priority, SRSummary, read_sr
from dicomnode.store.db import Store
from dicomnode.store.models import Study, StudyState
from dicomnode.store.queries import study_state
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies

N_STUDIES = 6


def _worklist(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``dicomnode ...argv`` in-process; its standard output."""
    capsys.readouterr()
    rc = cli.main(list(argv))
    out = capsys.readouterr().out
    assert rc == 0, out
    return out


def _assert_reading_order(rows: list[dict[str, Any]]) -> None:
    """Ranks 1..n; the urgent band (urgent, waited) before routine; each band oldest first."""
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    bands = [r["reason"] == "routine" for r in rows]
    assert bands == sorted(bands), [r["reason"] for r in rows]
    for band in (False, True):
        arrivals = [
            datetime.fromisoformat(r["arrived_at"]) for r in rows if (r["reason"] == "routine") is band
        ]
        assert arrivals == sorted(arrivals)


def test_worklist_orders_urgent_srs_first_from_sr_folder_and_from_sql(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in list(os.environ):  # only the config file below configures the CLI
        if key.startswith("DICOMNODE_") and not key.startswith("DICOMNODE_TEST_"):
            monkeypatch.delenv(key)
    settings = make_settings()
    node = node_factory(settings)
    studies = write_phantom_studies(tmp_path / "in", N_STUDIES, seed=123, positive_fraction=0.5)
    for st in studies:
        assert all(r.status == 0 for r in push_files(st.paths, "127.0.0.1", node.port))
    got = pacs.wait_for(2 * N_STUDIES, timeout=120)
    assert len(got) == 2 * N_STUDIES, f"PACS received {len(got)} objects"

    # every SR reads back with highdicom and with our reader, and they agree
    srs: dict[str, SRSummary] = {}
    for r in got:
        if r.sop_class_uid != str(Comprehensive3DSRStorage):
            continue
        report = hd.sr.srread(r.path)
        assert isinstance(report, hd.sr.Comprehensive3DSR)
        summary = read_sr(r.path)
        assert summary.study_uid == report.StudyInstanceUID == r.study_uid
        assert summary.sop_instance_uid == report.SOPInstanceUID
        assert 0.0 <= summary.probability <= 1.0
        assert summary.present == (summary.priority is Priority.URGENT)
        srs[summary.study_uid] = summary
    assert set(srs) == {st.study_uid for st in studies}
    urgent = {uid for uid, s in srs.items() if s.priority is Priority.URGENT}
    routine = set(srs) - urgent
    assert urgent and routine, f"the model put all {N_STUDIES} studies in one band: nothing to order"

    # --- from the SR folder the PACS wrote (the SCs in it are skipped) ---
    now = datetime.now(UTC)
    rows = json.loads(_worklist(capsys, "worklist", "--sr-dir", str(pacs.out_dir), "--format", "json"))
    assert len(rows) == N_STUDIES
    _assert_reading_order(rows)
    assert {r["study_uid"] for r in rows[: len(urgent)]} == urgent
    for r in rows:
        s = srs[r["study_uid"]]
        assert r["reason"] == ("urgent" if s.priority is Priority.URGENT else "routine")
        assert r["priority"] == s.priority.value
        assert r["probability"] == pytest.approx(s.probability, abs=1e-4)
        # arrival is the SR's content time: made moments ago, whatever the node's timezone
        assert abs(datetime.fromisoformat(r["arrived_at"]) - now) < timedelta(minutes=5)

    # the same order as CSV
    text = _worklist(capsys, "worklist", "--sr-dir", str(pacs.out_dir), "--format", "csv")
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(int(c["rank"]), c["study_uid"], c["reason"]) for c in table] == [
        (r["rank"], r["study_uid"], r["reason"]) for r in rows
    ]
    assert [float(c["probability"]) for c in table] == [r["probability"] for r in rows]

    # --- from the node's SQL record, through a config file ---
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        for st in studies:
            assert study_state(store, st.study_uid) is StudyState.DELIVERED
        config = tmp_path / "dicomnode.toml"
        config.write_text(
            "[dicomnode]\n"
            f'storage_dir = "{settings.storage_dir}"\n'
            f'database_url = "{settings.effective_database_url}"\n'
        )
        sql_rows = json.loads(_worklist(capsys, "--config", str(config), "worklist", "--format", "json"))
        assert len(sql_rows) == N_STUDIES
        _assert_reading_order(sql_rows)
        assert {r["study_uid"] for r in sql_rows[: len(urgent)]} == urgent
        assert {r["study_uid"]: (r["priority"], r["probability"]) for r in sql_rows} == {
            uid: (s.priority.value, pytest.approx(s.probability, abs=1e-4)) for uid, s in srs.items()
        }
        assert all(r["reason"] != "waited" for r in sql_rows)

        # a routine study that has waited 10 hours joins the urgent band (--max-wait 60 minutes)
        old = sorted(routine)[0]
        with store.session() as sess:
            sess.execute(
                update(Study)
                .where(Study.study_uid == old)
                .values(first_received_at=datetime.now(UTC) - timedelta(hours=10))
            )
            sess.commit()
        raised = json.loads(
            _worklist(capsys, "--config", str(config), "worklist", "--format", "json", "--max-wait", "60")
        )
        _assert_reading_order(raised)
        by_uid = {r["study_uid"]: r for r in raised}
        assert by_uid[old]["reason"] == "waited"
        assert by_uid[old]["rank"] == 1  # the oldest in the urgent band
        assert by_uid[old]["waited_minutes"] == pytest.approx(600, abs=5)
        assert {uid for uid, r in by_uid.items() if r["reason"] == "urgent"} == urgent
        assert {uid for uid, r in by_uid.items() if r["reason"] == "routine"} == routine - {old}
    finally:
        store.dispose()
