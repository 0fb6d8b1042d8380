"""The web page in a real browser: Debian's Chromium, driven by Playwright, against a real node.

The node (in this process, :func:`tests.conftest.node_factory`) receives real radiographs (the
shared data folder's CR/DX files, NEMA's RG1 chest CR from pydicom-data) and phantoms over
C-STORE, analyses them with the tiny test model and delivers to two PACS. The second PACS is down
while the first phantom is delivered, so that study ends ``delivery_failed``. The web page then
runs as ``dicomnode serve`` runs it (its own store, a token set) and the browser:

- is sent to the login form, is refused a wrong token, logs in;
- reads the worklist: urgent studies first, each band oldest first, as the analyses said;
- opens the studies, model and health pages;
- on the failed study's page presses "Re-send results" once the second PACS is up, and sees the
  study delivered and the ``study.resend_requested`` and ``study.resend_done`` events; the PACS
  got the SR and the SC.

Screenshots go to ``$DICOMNODE_TEST_ARTEFACTS/web/`` (default tests/artefacts/web/); with
``DICOMNODE_UPDATE_DOCS_SCREENSHOTS=1`` the worklist and study page are copied to docs/.
Playwright drives the Chromium at ``/usr/bin/chromium`` (``make test`` installs it from Debian);
it never downloads a browser.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicomnode.config import Destination, Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.ops.audit import AuditFilter, studies
from dicomnode.ops.drift import BASELINE_CARD_KEY
from dicomnode.ops.groundtruth import import_ground_truth
from dicomnode.store.db import Store
from dicomnode.store.queries import study_state
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from dicomnode.web import WebServer, start_web_server
from tests.conftest import REPO
from tests.support import artefacts_dir, free_port, wait_until
from tests.tiny_model import tiny_card, write_tiny_model
from training.image_sets import shared_data_dir

CHROMIUM = Path(os.environ.get("DICOMNODE_TEST_CHROMIUM", "/usr/bin/chromium"))
TOKEN = "browser-test-token-0123456789"
TERMINAL = {"delivered", "delivery_failed", "not_applicable", "failed"}

pytestmark = [pytest.mark.process, pytest.mark.slow]  # Chromium runs as a subprocess


def _real_files(out: Path) -> list[Path]:
    """The real radiographs with File Meta, each relabelled as a study of its own."""
    shared = shared_data_dir() / "dicom"
    if not shared.is_dir():
        pytest.skip(f"real DICOM files not here: {shared} (the shared data folder; set DICOMNODE_DATA_DIR)")
    sources = [
        p
        for p in sorted(shared.glob("*.dcm"))
        if "TransferSyntaxUID" in pydicom.dcmread(p, stop_before_pixels=True, force=True).file_meta
    ]
    rg1 = get_testdata_file("RG1_UNCR.dcm", download=False)
    if isinstance(rg1, str):
        sources.append(Path(rg1))
    out.mkdir(parents=True)
    files = []
    for p in sources:
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
            generate_uid(),
            generate_uid(),
            generate_uid(),
        )
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / p.name, enforce_file_format=True)
        files.append(out / p.name)
    return files


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A headless Chromium from Debian, driven by Playwright."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (make test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright comes with the dev extra")
    with sync_api.sync_playwright() as pw:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def _states(store: Store, uids: list[str]) -> dict[str, str]:
    return {u: str(getattr(study_state(store, u), "value", "")) for u in uids}


def test_web_page_in_chromium_against_a_node_that_analysed_real_studies(
    tmp_path: Path,
    pacs: Receiver,
    node_factory: Callable[[Settings], Node],
    chromium: Any,
) -> None:
    real = _real_files(tmp_path / "real")
    phantoms = write_phantom_studies(tmp_path / "phantoms", 6, seed=3)
    archive = Receiver(tmp_path / "archive", ae_title="ARCHIVE", port=free_port())
    settings = Settings(
        ae_title="DICOMNODE",
        host="127.0.0.1",
        port=0,
        storage_dir=tmp_path / "node",
        destinations=(
            Destination("TESTPACS", "127.0.0.1", pacs.port),
            Destination("ARCHIVE", "127.0.0.1", archive.port),
        ),
        quiet_seconds=0.5,
        # a validation score histogram in the card: the model page plots PSI against it
        model=write_tiny_model(
            tmp_path / "tiny.onnx",
            replace(tiny_card(), metrics={BASELINE_CARD_KEY: {"counts": [2, 2, 3, 5, 8, 8, 5, 3, 2, 2]}}),
        ),
        delivery_attempts=1,  # a PACS that is down fails the study at once
        select_secondary_capture=True,  # the NIH and SIIM captures are read too
        web_token=TOKEN,
    )
    node = node_factory(settings)
    assert node.store is not None

    # 1. the first phantom while ARCHIVE is down: delivered to TESTPACS only, delivery_failed
    failed_uid = phantoms[0].study_uid
    assert all(
        r.status == 0 for r in push_files(phantoms[0].paths, "127.0.0.1", node.port, calling_ae="MODALITY")
    )
    wait_until(
        lambda: _states(node.store, [failed_uid])[failed_uid] == "delivery_failed",
        60,
        "the first study to fail delivery",
    )  # type: ignore[arg-type]
    # 2. ARCHIVE up; the real studies and the other phantoms
    archive.start()
    try:
        rest = real + [p for st in phantoms[1:] for p in st.paths]
        assert all(r.status == 0 for r in push_files(rest, "127.0.0.1", node.port, calling_ae="MODALITY"))
        uids = [failed_uid] + [
            str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in rest
        ]
        wait_until(
            lambda: set(_states(node.store, uids).values()) <= TERMINAL,
            120,
            "every study analysed and delivered",
            poll=0.5,
        )  # type: ignore[arg-type]
        rows = {r.study_uid: r for r in studies(node.store, AuditFilter(), limit=None)}
        assert rows[failed_uid].state == "delivery_failed"
        assert sum(r.state == "delivered" for r in rows.values()) >= len(uids) - 3  # cspine: not applicable

        # radiologists' reads of every scored study, the model right but for one: the model page
        # plots sensitivity and specificity against them
        scored = sorted(uid for uid, r in rows.items() if r.score is not None)
        reads = tmp_path / "reads.csv"
        reads.write_text(
            "study_uid,label\n"
            + "".join(f"{u},{int((rows[u].priority == 'urgent') != (u == scored[0]))}\n" for u in scored)
        )
        import_ground_truth(node.store, reads)  # type: ignore[arg-type]

        web = start_web_server(settings, Store(settings.effective_database_url), port=0, own_store=True)
        try:
            _browse(chromium, web, rows, failed_uid, archive)
        finally:
            web.stop()
    finally:
        archive.stop()


def _browse(browser: Any, web: WebServer, rows: dict[str, Any], failed_uid: str, archive: Receiver) -> None:
    shots = artefacts_dir() / "web"
    shots.mkdir(exist_ok=True)
    base = web.url.rstrip("/")
    page = browser.new_page(viewport={"width": 1280, "height": 760})

    # login: every page sends the browser to the form first
    page.goto(base + "/")
    assert page.url == base + "/login?next=/"
    page.fill("input[name=token]", "not-the-token")
    page.click("button[type=submit]")
    assert page.locator("#login-error").inner_text() == "Wrong token."
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    assert page.url == base + "/"

    # the worklist: urgent first, each band oldest first, as the analyses said
    listed = page.locator("#worklist tbody tr[data-reason]")
    listed.first.wait_for()  # count() does not wait for the page the login redirected to
    order = [
        (
            listed.nth(i).get_attribute("data-reason"),
            listed.nth(i).get_attribute("data-study"),
            listed.nth(i).locator("td").nth(4).inner_text(),
        )
        for i in range(listed.count())
    ]
    assert {uid for _, uid, _ in order} == set(rows), "the worklist lists every study"
    reasons = [reason for reason, _, _ in order]
    assert "urgent" in reasons and "routine" in reasons, f"need both bands to check the order: {reasons}"
    assert reasons == sorted(reasons, key=lambda r: r != "urgent"), (
        f"a routine study before an urgent one: {reasons}"
    )
    for reason, uid, _ in order:
        assert (reason == "urgent") == (rows[uid].priority == "urgent"), uid
    for band in ("urgent", "routine"):
        arrived = [datetime.fromisoformat(at) for reason, _, at in order if reason == band]
        assert arrived == sorted(arrived), f"{band} band not oldest first"
    assert "PHANTOM" not in page.content(), "patient names are off by default"
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(shots / "worklist.png"), full_page=True)

    for name in ("studies", "model", "health"):
        page.goto(f"{base}/{name}")
        assert page.locator("h1").inner_text() == name.capitalize()
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        if name == "model":  # score histogram, PSI per day, confusion counts, measures per week
            assert page.locator("figure svg").count() == 4
            assert page.locator("#performance tbody tr").count() == 1
            assert page.locator("#drift tbody tr td").nth(5).inner_text() in ("stable", "moderate", "major")
        if name == "health":
            archive_row = f'#health-destinations tr[data-destination="ARCHIVE@127.0.0.1:{archive.port}"]'
            assert page.locator(archive_row).count() == 1

    # the study whose delivery failed: re-send it from its page
    page.goto(f"{base}/studies/{failed_uid}")
    assert page.locator("#state").inner_text() == "delivery_failed"
    assert (
        page.locator(f'#destinations tr[data-destination="ARCHIVE@127.0.0.1:{archive.port}"]').get_attribute(
            "data-ok"
        )
        == "false"
    )
    before = len([r for r in archive.received if r.study_uid == failed_uid])
    page.click("#resend")
    assert page.locator("#resend-notice").inner_text().startswith("Re-send")  # queued, or already done

    def delivered() -> bool:
        page.reload()
        return page.locator("#state").inner_text() == "delivered"

    wait_until(delivered, 30, "the re-sent study to be delivered", poll=0.5)
    kinds = page.locator("#events tr[data-kind]").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    assert (
        kinds.index("study.resend_requested")
        < kinds.index("study.delivered")
        < kinds.index("study.resend_done")
    )
    assert (
        page.locator(f'#destinations tr[data-destination="ARCHIVE@127.0.0.1:{archive.port}"]').get_attribute(
            "data-ok"
        )
        == "true"
    )
    got = [r for r in archive.received if r.study_uid == failed_uid]
    assert before == 0 and len(got) == 2, "ARCHIVE got the SR and the SC once"
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(shots / "study.png"), full_page=True)

    if os.environ.get("DICOMNODE_UPDATE_DOCS_SCREENSHOTS") == "1":
        for name in ("worklist", "study"):
            _docs_png(shots / f"{name}.png", REPO / "docs" / f"web-{name}.png")


def _docs_png(shot: Path, out: Path) -> None:
    """A screenshot as docs keep it: 256 colours (a page has few), well under 300 KB."""
    from PIL import Image

    with Image.open(shot) as im:
        im.convert("RGB").quantize(256).save(out, optimize=True)
    assert out.stat().st_size < 300_000, f"{out} is {out.stat().st_size} bytes"
