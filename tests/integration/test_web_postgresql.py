"""The web page on PostgreSQL: the same pages as tests/unit/test_web_pages.py over a fresh
database on the real server (the queries differ by dialect: LATERAL joins, day buckets)."""

from __future__ import annotations

import warnings
from pathlib import Path

from dicomnode.web.app import create_app
from tests.unit.test_web_pages import analyse_phantoms, worklist_rows

with warnings.catch_warnings():  # starlette asks for httpx2 instead of httpx; both work
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def test_every_page_reads_postgresql(tmp_path: Path, pg_url: str) -> None:
    a = analyse_phantoms(tmp_path, pg_url)
    try:
        c = TestClient(create_app(a.settings, a.store), base_url="http://127.0.0.1:8088")
        rows = worklist_rows(c.get("/").text)
        assert rows[0] == ("waited", a.waited_uid) and [r for r, _ in rows[1:]] == ["urgent"] * 5
        assert c.get("/studies").text.count('data-state="analysed"') == 6
        uid = a.studies[0].study_uid
        study = c.get(f"/studies/{uid}").text
        assert 'id="state">analysed<' in study and 'data-kind="analysis.started"' in study
        assert c.get(f"/studies/{uid}/heatmap.png").headers["content-type"] == "image/png"
        model = c.get("/model").text
        assert 'id="threshold">0.5000' in model and "<svg" in model
        health = c.get("/health").text
        assert 'state=analysed">analysed</a></th><td class="num">6<' in health
    finally:
        a.store.dispose()
