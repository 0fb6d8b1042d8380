"""The web page's pages against a SQLite store of studies the real pipeline analysed (tiny model,
phantoms, no network): what each page shows, in which order, and what it keeps out.

Requests go through Starlette's TestClient in this process (no server, no socket); the browser
test (tests/integration/test_web_browser.py) drives the same pages in Chromium over a real node.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from sqlalchemy import update

from dicomnode.config import Destination, Settings
from dicomnode.model import PneumoniaModel
from dicomnode.ops.audit import AuditFilter, events
from dicomnode.ops.groundtruth import import_ground_truth
from dicomnode.store.db import Store
from dicomnode.store.models import Study, StudyState, utcnow
from dicomnode.store.records import set_study_state
from dicomnode.testing.phantoms import PhantomStudy, write_phantom_studies
from dicomnode.web import pages
from dicomnode.web.app import create_app
from tests.support import store_received
from tests.tiny_model import tiny_card, write_tiny_model
from worker.pipeline import Pipeline

with warnings.catch_warnings():  # starlette asks for httpx2 instead of httpx; both work
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@dataclass
class Analysed:
    settings: Settings
    store: Store
    studies: list[PhantomStudy]
    scores: dict[str, float]
    waited_uid: str  # a routine study that arrived five hours ago


def analyse_phantoms(tmp: Path, database_url: str = "") -> Analysed:
    """Six phantom studies through the real pipeline (tiny model, threshold 0.5: phantom 4 of
    seed 3 scores below it, the others above), no destination; phantom 4 then made five hours
    old, past the worklist's default maximum wait. ``database_url``: empty for SQLite."""
    settings = Settings(
        storage_dir=tmp / "node", model=tmp / "tiny.onnx", decode_memory_bytes=0, database_url=database_url
    )
    write_tiny_model(settings.model_path, tiny_card(threshold=0.5))
    store = Store(settings.effective_database_url)
    pipeline = Pipeline(settings, store, PneumoniaModel(settings.model_path))
    studies = write_phantom_studies(tmp / "in", 6, seed=3, size=128)
    scores = {}
    for st in studies:
        ds = pydicom.dcmread(st.paths[0])
        store_received(
            store,
            settings.instances_dir,
            ds,
            st.paths[0].read_bytes(),
            accession_number=str(ds.AccessionNumber),
        )
        set_study_state(store, st.study_uid, StudyState.COMPLETE, "test")
        score = pipeline.analyse_study(st.study_uid).score
        assert score is not None
        scores[st.study_uid] = score
    routine = [uid for uid, s in scores.items() if s < 0.5]
    assert len(routine) == 1 and len(scores) - len(routine) == 5, f"phantom scores moved: {scores}"
    with store.session() as s:
        s.execute(
            update(Study)
            .where(Study.study_uid == routine[0])
            .values(first_received_at=utcnow() - timedelta(hours=5))
        )
    return Analysed(settings, store, studies, scores, routine[0])


@pytest.fixture(scope="module", name="a")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Analysed]:
    """:func:`analyse_phantoms` on SQLite, once for the module."""
    a = analyse_phantoms(tmp_path_factory.mktemp("web"))
    yield a
    a.store.dispose()


def client(a: Analysed, **changes: object) -> TestClient:
    settings = a.settings.with_overrides(**changes) if changes else a.settings
    return TestClient(create_app(settings, a.store), base_url="http://127.0.0.1:8088")


def worklist_rows(html: str) -> list[tuple[str, str]]:
    """(reason, study UID) of each worklist row, in page order."""
    return re.findall(r'data-reason="(\w+)" data-study="([0-9.]+)"', html)


def test_worklist_puts_urgent_first_and_raises_a_routine_study_past_the_max_wait(a: Analysed) -> None:
    html = client(a).get("/").text
    rows = worklist_rows(html)
    assert len(rows) == 6
    # the routine study waited five hours (> 240 min): it joins the urgent band, and is the oldest
    assert rows[0] == ("waited", a.waited_uid)
    assert [r for r, _ in rows[1:]] == ["urgent"] * 5
    assert "raised: waited" in html and "1 raised" in html and "5 urgent" in html
    # with a longer max wait it is routine again, and last
    rows = worklist_rows(client(a).get("/?max_wait=600").text)
    assert rows[-1] == ("routine", a.waited_uid) and {r for r, _ in rows[:-1]} == {"urgent"}


def test_worklist_shows_score_wait_accession_and_heatmap_and_reloads_itself(a: Analysed) -> None:
    html = client(a).get("/").text
    uid = a.studies[0].study_uid
    accession = pydicom.dcmread(a.studies[0].paths[0]).AccessionNumber
    assert f"{a.scores[uid]:.3f}" in html and accession in html
    assert f'src="/studies/{uid}/heatmap.png"' in html
    assert "5 h 00 min" in html  # the raised study's wait
    assert '<meta http-equiv="refresh" content="30">' in html
    assert "http-equiv" not in client(a).get("/?refresh=0").text


def test_worklist_is_bounded_to_its_window_and_paginated(
    a: Analysed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one day back leaves out nothing here; the five-hours-old study is inside it
    assert len(worklist_rows(client(a).get("/?days=1").text)) == 6
    monkeypatch.setattr(pages, "PAGE_ROWS", 4)
    c = client(a)
    first, second = c.get("/").text, c.get("/?page=2").text
    assert len(worklist_rows(first)) == 4 and len(worklist_rows(second)) == 2
    assert "Page 1 of 2" in first and 'href="/?page=2' in first
    assert {u for _, u in worklist_rows(first) + worklist_rows(second)} == set(a.scores)


def test_patient_names_appear_only_when_the_operator_turns_them_on(a: Analysed) -> None:
    uid = a.studies[0].study_uid
    off = client(a)
    for url in ("/", "/studies", f"/studies/{uid}"):
        assert "PHANTOM" not in off.get(url).text, url
    on = client(a, web_show_patient_names=True)
    assert "PHANTOM, 0000" in on.get("/").text
    assert "PHANTOM, 0000" in on.get("/studies").text
    assert "PHANTOM, 0000" in on.get(f"/studies/{uid}").text


def test_studies_list_pages_back_through_every_study(a: Analysed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "PAGE_ROWS", 4)
    c = client(a)
    seen: list[str] = []
    url = "/studies"
    while url:
        html = c.get(url).text
        seen += re.findall(r'<tr data-study="([0-9.]+)" data-state="analysed">', html)
        nxt = re.search(r'href="(/studies\?before=[^"]+)"', html)
        url = nxt.group(1).replace("&amp;", "&") if nxt else ""
    assert sorted(seen) == sorted(a.scores) and len(seen) == 6
    assert c.get("/studies?state=delivered").text.count("data-study=") == 0
    assert c.get("/studies?state=nonsense").status_code == 400


def test_study_page_shows_state_stages_events_and_the_heatmap(a: Analysed) -> None:
    uid = a.studies[1].study_uid
    c = client(a)
    html = c.get(f"/studies/{uid}").text
    assert 'id="state">analysed<' in html
    for stage in (
        "first instance received",
        "preprocessed",
        "inferred",
        "results built",
        "analysis finished",
    ):
        assert f"<th>{stage}</th><td>20" in html, stage  # each with its timestamp
    assert "results delivered</th><td>-" in html  # no destination: never delivered
    assert 'data-kind="analysis.started"' in html and 'data-kind="study.analysed"' in html
    assert "No delivery attempts." in html
    assert 'id="resend"' not in html  # nothing to re-send to
    png = c.get(f"/studies/{uid}/heatmap.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    small = Image.open(io.BytesIO(png.content))
    assert max(small.size) == 96 and small.mode == "RGB"
    large = Image.open(io.BytesIO(c.get(f"/studies/{uid}/heatmap.png?side=360").content))
    assert max(small.size) < max(large.size) <= 360  # shrunk, never enlarged


def test_unknown_or_malformed_study_is_not_found(a: Analysed) -> None:
    c = client(a)
    assert c.get("/studies/1.2.3.4").status_code == 404
    assert c.get("/studies/not-a-uid").status_code == 404
    assert c.get("/studies/1.2.3.4/heatmap.png").status_code == 404


def test_resend_without_a_destination_queues_nothing_and_says_why(a: Analysed) -> None:
    uid = a.studies[2].study_uid
    c = client(a)
    assert 'id="resend"' not in c.get(f"/studies/{uid}").text  # no button without a destination
    done = c.post(f"/studies/{uid}/resend", data={"csrf": create_csrf(c)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/studies/{uid}?resend=no-destination"
    assert not events(a.store, AuditFilter(study_uid=uid), kind="study.resend_requested")
    assert c.post(f"/studies/{uid}/resend", data={"csrf": "forged"}).status_code == 400


def create_csrf(c: TestClient) -> str:
    """The CSRF token the app gives this (cookie-less) client, from a page with a form."""
    ctx = c.app.state.web  # type: ignore[attr-defined]
    return str(ctx.auth.csrf_token(None))


def test_model_page_shows_card_threshold_drift_and_performance_against_reads(
    a: Analysed, tmp_path: Path
) -> None:
    c = client(a)
    html = c.get("/model").text
    assert "tiny-test-model" in html and 'id="threshold">0.5000' in html
    assert '<td>0.0.1-test</td><td class="num">6</td>' in html  # six analyses in the drift table
    assert html.count("<svg") == 2  # score histogram, and sensitivity/specificity per week (empty)
    assert "no radiologist reads imported" in html
    reads = tmp_path / "reads.csv"
    reads.write_text(
        "study_uid,label\n" + "".join(f"{uid},{1 if s >= 0.5 else 0}\n" for uid, s in a.scores.items())
    )
    import_ground_truth(a.store, reads)
    html = c.get("/model").text
    assert "no radiologist reads imported" not in html
    assert html.count("<svg") == 3  # and the confusion counts
    assert "<td>1.000 (" in html  # sensitivity and specificity of 1 against these reads, with CIs


def test_health_page_shows_destinations_states_queue_and_disk(a: Analysed) -> None:
    c = client(a, destinations=(Destination("PACS", "127.0.0.1", 104),))
    html = c.get("/health").text
    assert 'data-destination="PACS@127.0.0.1:104" data-up="true"' in html
    assert re.search(r'state=analysed">analysed</a></th><td class="num">6<', html)
    assert "queue depth</th><td>0<" in html  # in-process: complete studies waiting
    assert "delivery round overdue</th><td>0<" in html
    assert "GiB of" in html and "DICOMNODE_MIN_FREE_BYTES" in html


def test_every_answer_forbids_caching_framing_and_scripts(a: Analysed) -> None:
    r = client(a).get("/")
    assert r.headers["cache-control"] == "no-store"
    assert "script-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert "<script" not in r.text


def test_a_resend_that_cannot_run_is_recorded_with_its_reason(a: Analysed) -> None:
    from dicomnode.web.resend import Resender
    from tests.support import wait_until

    settings = a.settings.with_overrides(destinations=(Destination("PACS", "127.0.0.1", 104),))
    resender = Resender(settings, a.store)
    try:
        assert resender.request("1.2.3.999", by="test") is True  # no results: resend raises at once
        wait_until(lambda: not resender.queued("1.2.3.999"), 10, "the re-send to end")
    finally:
        resender.stop()
    timeline = events(a.store, AuditFilter(study_uid="1.2.3.999"))
    assert [e.kind for e in timeline] == ["study.resend_requested", "study.resend_failed"]
    assert timeline[0].detail == {"by": "test"}
    assert "has no results to send" in str(timeline[1].detail)


def test_thumbnails_are_cached_within_their_byte_budget(a: Analysed) -> None:
    from dicomnode.delivery.rounds import result_file
    from dicomnode.store.queries import latest_analysis
    from dicomnode.web.thumbnails import Thumbnails

    paths = []
    for st in a.studies[:3]:
        analysis = latest_analysis(a.store, st.study_uid)
        assert analysis is not None and analysis.sc_sop_instance_uid
        paths.append(result_file(a.settings, st.study_uid, analysis.sc_sop_instance_uid))
    sizes = [len(Thumbnails().png(p)) for p in paths]
    cache = Thumbnails(cache_bytes=sizes[1] + sizes[2])  # room for the last two, not all three
    first = cache.png(paths[0])
    assert cache.png(paths[0]) is first  # the cached bytes, not a new rendering
    for p in paths[1:]:
        cache.png(p)
    assert cache._held <= cache.cache_bytes and len(cache._cache) == 2
    assert cache.png(paths[0]) is not first  # the oldest went first
