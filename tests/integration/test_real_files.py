"""Real radiographs from real modalities through a real ``dicomnode serve`` (issue 15).

Every file of the shared real-data folder's ``dicom/`` (``../shared/data/dicom``, or
``$DICOMNODE_DATA_DIR/dicom``) and the NEMA WG04 radiographs of ``pydicom-data`` (``RG1_*``: Philips
CR chest PA, 15-bit MONOCHROME1, uncompressed and JPEG 2000; ``RG3_*``: Fuji CR tibia) go to one
node process in embedded mode (SQLite, results to a test PACS), each as a study of its own (the
RG1 and RG3 variants share their UIDs, so every file gets fresh Study, Series and SOP Instance
UIDs; nothing else changes). ``CR-MONO1-10-chest.dcm`` has no File Meta Information: it is read
with ``force=True`` and its data set sent by a pynetdicom SCU, as an archive that exports raw data
sets would send it.

What the node must do (docs/models.md, "Real files through the node"): a chest CR/DX gets an SR and
an SC that dciodvfy accepts; the cervical spine and the tibia are ``not_applicable`` with the body
part as the reason; the Secondary Capture chest images (NIH ChestX-ray14 as DX, RSNA-style CR) are
``not_applicable`` by default and read like the CR/DX with ``DICOMNODE_SELECT_SECONDARY_CAPTURE``.
The model is the tiny test model (tests/tiny_model.py): its score means nothing, the test is about
what the node reads and what it sends back.

The table (file | modality | SOP class | transfer syntax | what the node did | dciodvfy errors) is
printed and written as Markdown to ``$DICOMNODE_TEST_ARTEFACTS`` (default tests/artefacts/).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE

from dicomnode.config import Destination, Settings
from dicomnode.delivery.push import push_files
from dicomnode.results import read_sr
from dicomnode.store.db import Store
from dicomnode.store.queries import study_state
from dicomnode.testing.pacs import Receiver
from tests.conftest import REPO, settings_env
from tests.support import LoggedProcess, artefacts_dir, echo_ok, free_port, wait_until
from tests.tiny_model import write_tiny_model
from training.image_sets import shared_data_dir

DICOMNODE = [sys.executable, "-m", "dicomnode"]
TERMINAL = {"delivered", "delivery_failed", "not_applicable", "failed", "analysed"}
#: the NEMA WG04 files of pydicom-data this test sends (all four variants of each)
WG04 = [f"{p}_{v}.dcm" for p in ("RG1", "RG3") for v in ("UNCR", "UNCI", "J2KR", "J2KI")]
NO_FILE_META = "CR-MONO1-10-chest.dcm"
SC_OFF_REASON = "Secondary Capture is not read (DICOMNODE_SELECT_SECONDARY_CAPTURE is off)"


@dataclass
class Case:
    """One real file, as sent: a study of its own."""

    name: str
    modality: str
    sop_class: str
    transfer_syntax: str
    body_part: str
    study_uid: str = ""
    sent: Path | Dataset | None = None  # a relabelled copy, or the data set itself (no file meta)
    status: int | None = None
    state: str = ""
    did: str = ""
    dciodvfy: list[str] = field(default_factory=list)

    @property
    def secondary_capture(self) -> bool:
        return self.sop_class == str(SecondaryCaptureImageStorage)

    @property
    def chest(self) -> bool:
        return self.body_part in ("CHEST", "")  # the NIH image names none

    def cells(self) -> list[str]:
        return [
            self.name if len(self.name) <= 32 else f"{self.name[:24]}....dcm",  # the UID-named ones
            self.modality,
            UID(self.sop_class).name,
            self.transfer_syntax,
            self.did,
            "; ".join(self.dciodvfy) if self.dciodvfy else ("0" if self.state == "delivered" else "-"),
        ]


def _cases(out: Path) -> list[Case]:
    """Every real file, relabelled as a new study in ``out`` (skips when the data is absent)."""
    shared = shared_data_dir() / "dicom"
    if not shared.is_dir():
        pytest.skip(
            f"real DICOM files not here: {shared} (the shared data folder; set DICOMNODE_DATA_DIR to it)"
        )
    found = [get_testdata_file(name, download=False) for name in WG04]
    wg04 = [Path(f) for f in found if isinstance(f, str)]
    if len(wg04) != len(WG04):
        pytest.skip(
            "pydicom-data is not installed: `.venv/bin/pip install pydicom-data` (the dev extra has it)"
        )
    out.mkdir(parents=True)
    cases = []
    for path in [*sorted(shared.glob("*.dcm")), *wg04]:
        ds = pydicom.dcmread(path, force=True)
        meta = ds.file_meta
        has_meta = "TransferSyntaxUID" in meta
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        case = Case(
            path.name,
            str(ds.get("Modality", "")),
            str(ds.SOPClassUID),
            UID(meta.TransferSyntaxUID).name if has_meta else "none (no File Meta): read as Implicit VR LE",
            str(ds.get("BodyPartExamined", "") or "").upper(),
            str(ds.StudyInstanceUID),
        )
        if has_meta:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            case.sent = out / path.name
            ds.save_as(case.sent, enforce_file_format=True)  # encapsulated pixel data kept as it is
        else:
            case.sent = ds
        cases.append(case)
    assert NO_FILE_META in {c.name for c in cases if isinstance(c.sent, Dataset)}, (
        "the raw data set is missing"
    )
    return cases


def _send_raw_dataset(ds: Dataset, port: int) -> int | None:
    """C-STORE a data set read from a file without File Meta, as pynetdicom sends one: the SCU
    names the transfer syntax pydicom read it in (pynetdicom asks for it; nothing is re-encoded)."""
    implicit, little = ds.original_encoding
    assert little, "a big endian raw data set"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ae = AE(ae_title="ARCHIVE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ds.SOPClassUID)  # pynetdicom's default syntaxes, Implicit VR LE among them
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established, "the node refused the archive's association"
    try:
        rsp = assoc.send_c_store(ds)
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()


def _results(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``dicomnode results --format json``, by Study Instance UID."""
    out = subprocess.run(
        [*DICOMNODE, "results", "--format", "json", "--limit", "100"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {str(r["study_uid"]): r for r in json.loads(out.stdout)}


def markdown(cases: list[Case], title: str) -> str:
    head = [
        "file",
        "modality",
        "SOP class",
        "transfer syntax",
        "what the node did",
        "dciodvfy errors (SR, SC)",
    ]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in case.cells()) + " |" for case in cases]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("secondary_capture", [False, True], ids=["sc-off-default", "sc-on"])
def test_real_radiographs_through_dicomnode_serve(
    secondary_capture: bool,
    tmp_path: Path,
    pacs: Receiver,
    processes: Callable[..., LoggedProcess],
    dciodvfy_errors: Callable[[Dataset | Path], list[str]],
) -> None:
    cases = _cases(tmp_path / "in")
    settings = Settings(
        ae_title="DICOMNODE",
        host="127.0.0.1",
        port=free_port(),
        storage_dir=tmp_path / "node",
        destinations=(Destination("TESTPACS", "127.0.0.1", pacs.port),),
        quiet_seconds=1.0,
        model=write_tiny_model(tmp_path / "tiny.onnx"),
        metrics_port=0,
        log_format="json",
        delivery_backoff_seconds=0.2,
        select_secondary_capture=secondary_capture,
    )
    assert settings.select_secondary_capture is secondary_capture
    env = settings_env(settings)
    node = processes([*DICOMNODE, "serve"], env, tmp_path / "node.log")
    wait_until(
        lambda: node.alive() and echo_ok(settings.port, timeout=1), 90, "dicomnode serve to answer C-ECHO"
    )

    files = {c.sent: c for c in cases if isinstance(c.sent, Path)}
    for res in push_files(list(files), "127.0.0.1", settings.port, calling_ae="MODALITY"):
        files[res.path].status = res.status
    for case in cases:
        if isinstance(case.sent, Dataset):
            case.status = _send_raw_dataset(case.sent, settings.port)
    assert {c.name: c.status for c in cases} == {c.name: 0x0000 for c in cases}, "a C-STORE was refused"

    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        wait_until(
            lambda: (
                node.alive()
                and all(str(getattr(study_state(store, c.study_uid), "value", "")) in TERMINAL for c in cases)
            ),
            600,
            "every study to be delivered or not applicable",
            poll=1,
        )
    finally:
        store.dispose()
    results = _results(env)

    read = [c for c in cases if c.chest and (not c.secondary_capture or secondary_capture)]
    got = pacs.wait_for(2 * len(read), timeout=60)
    by_study: dict[str, dict[str, Path]] = {}
    for r in got:
        by_study.setdefault(r.study_uid, {})[r.sop_class_uid] = r.path
    for case in cases:
        row = results[case.study_uid]
        case.state = str(row["state"])
        if row["score"] is not None:
            case.did = f"{case.state}, score {float(row['score']):.3f} ({row['priority']})"
        else:
            case.did = f"{case.state}: {row['reason']}"
        for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            path = by_study.get(case.study_uid, {}).get(str(sop_class))
            if path is not None:
                case.dciodvfy += [f"{UID(sop_class).name}: {e}" for e in dciodvfy_errors(path)]

    title = f"Real files through `dicomnode serve`, DICOMNODE_SELECT_SECONDARY_CAPTURE={str(secondary_capture).lower()}"
    table = markdown(cases, title)
    print("\n" + table)
    (artefacts_dir() / f"real-files-sc-{'on' if secondary_capture else 'off'}.md").write_text(table)

    # every study before any assertion: the table shows all of them
    for case in cases:
        if case in read:
            assert case.state == "delivered", case.did
            assert set(by_study.get(case.study_uid, {})) == {
                str(Comprehensive3DSRStorage),
                str(SecondaryCaptureImageStorage),
            }, case.name
            sr = read_sr(by_study[case.study_uid][str(Comprehensive3DSRStorage)])
            assert sr.probability == pytest.approx(float(results[case.study_uid]["score"]), abs=1e-6)
            assert case.dciodvfy == [], case.name
        elif case.secondary_capture and case.chest:
            assert case.state == "not_applicable" and SC_OFF_REASON in str(results[case.study_uid]["reason"])
        else:  # the cervical spine and the tibia
            assert case.state == "not_applicable", case.did
            assert f"body part {case.body_part}" in str(results[case.study_uid]["reason"]), case.did
            assert case.study_uid not in by_study, f"{case.name} got results"
    assert {c.name for c in read} >= {NO_FILE_META, "RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"}
    assert sum(c.secondary_capture for c in read) == (2 if secondary_capture else 0)
