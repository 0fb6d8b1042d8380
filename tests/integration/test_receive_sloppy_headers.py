"""Sloppy headers from a real modality, on SQLite and PostgreSQL: values SQL cannot hold are stored
as NULL with an event (never Success and then a failed row, never a node that cannot restart), and
UIDs are normalised or refused by one rule, so disk, SQL and results agree."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.storage import instance_path
from dicomnode.store.models import Event, Study
from dicomnode.store.queries import study_instances
from dicomnode.testing.phantoms import make_phantom
from tests.integration.test_scp_refusals import _raw_file

LONG_ACCESSION = "ACC-0123456789-XYZW"  # 19 characters: over the column's 16
LONG_MODALITY = "DX-WITH-A-LONG-CODE"  # 19 characters


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def _settings(tmp_path: Path, database_url: str = "") -> Settings:
    return Settings(
        host="127.0.0.1", port=0, storage_dir=tmp_path / "node", quiet_seconds=3600, database_url=database_url
    )


def _sloppy(seed: int, **values: str) -> Dataset:
    """A phantom with header values set as a careless modality sends them."""
    ds = make_phantom(np.random.default_rng(seed), False, size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the values we make sloppy on purpose
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return ds


def _saved(ds: Dataset, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    return path


def _events(node: Node, kind: str) -> list[Event]:
    assert node.store is not None
    with node.store.session() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind)))


def test_over_long_accession_and_modality_are_stored_as_null_and_the_node_restarts(
    tmp_path: Path,
    db_url: str,
    node_factory: Callable[[Settings], Node],
    logs: list[dict[str, Any]],
) -> None:
    settings = _settings(tmp_path, db_url)
    ds = _sloppy(41, AccessionNumber=LONG_ACCESSION, Modality=LONG_MODALITY)
    f = _saved(ds, tmp_path / "sloppy.dcm")

    node = node_factory(settings)
    assert push_files([f], "127.0.0.1", node.port)[0].status == status.SUCCESS
    assert node.flush_records()
    assert node.store is not None
    [row] = study_instances(node.store, ds.StudyInstanceUID)  # recorded: the study will be analysed
    assert row.modality is None
    with node.store.session() as s:
        study = s.scalars(select(Study).where(Study.study_uid == ds.StudyInstanceUID)).one()
        assert study.accession_number is None
    [dropped] = _events(node, "instance.header_value_dropped")
    assert dropped.detail == {"sop_instance_uid": ds.SOPInstanceUID, "attributes": ["Modality", "AccessionNumber"]}
    node.stop()

    # the file is whole and stored as sent; a restart finds nothing left to record and starts
    [stored] = list(settings.instances_dir.rglob("*.dcm"))
    assert stored.read_bytes()[-64:] == f.read_bytes()[-64:]
    again = node_factory(settings)
    report = again.wait_rescan(60)
    assert report is not None
    assert (report.recorded, report.quarantined) == (0, 0)
    text = repr(logs)
    assert LONG_ACCESSION not in text and LONG_MODALITY not in text  # attribute names only


def test_unrecorded_over_long_accession_is_recorded_by_the_restart_rescan(
    tmp_path: Path, db_url: str, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    """The file of an earlier version's failed row (or a crash before the commit) is recovered at
    start, on PostgreSQL too, rather than stopping the node every time it starts."""
    settings = _settings(tmp_path, db_url)
    ds = _sloppy(42, AccessionNumber=LONG_ACCESSION)
    path = instance_path(settings.instances_dir, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    path.parent.mkdir(parents=True)
    _saved(ds, path)

    node = node_factory(settings)
    report = node.wait_rescan(60)
    assert report is not None and report.recorded == 1
    assert node.store is not None
    [row] = study_instances(node.store, ds.StudyInstanceUID)
    assert Path(row.path) == path.resolve()
    [dropped] = _events(node, "instance.header_value_dropped")
    assert dropped.detail["attributes"] == ["AccessionNumber"]
    assert LONG_ACCESSION not in repr(logs)


def _file_with_study_uid(ds: Dataset, raw_value: bytes, path: Path) -> Path:
    """``ds`` as a Part 10 file whose Study Instance UID is ``raw_value`` byte for byte (pydicom
    itself would strip the whitespace before writing it)."""
    buf = io.BytesIO()
    fp = DicomFileLike(buf)
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    body = buf.getvalue()
    at = body.index(b"\x20\x00\x0d\x00UI")  # (0020,000D), explicit VR little endian
    (old_len,) = struct.unpack("<H", body[at + 6 : at + 8])
    value = raw_value + b"\x00" * (len(raw_value) % 2)
    body = body[: at + 6] + struct.pack("<H", len(value)) + value + body[at + 8 + old_len :]
    return _raw_file(path, ds.SOPClassUID, ds.SOPInstanceUID, body)


STUDY_UID = "1.2.826.0.1.3680043.10.543.7"


@pytest.mark.parametrize("suffix", [b"\n", b"\t", b"\r\n", b"\x00\x00\n"])
def test_uid_with_trailing_whitespace_is_refused_with_c210(
    tmp_path: Path, suffix: bytes, node_factory: Callable[[Settings], Node]
) -> None:
    node = node_factory(_settings(tmp_path))
    ds = make_phantom(np.random.default_rng(43), False, size=64)
    f = _file_with_study_uid(ds, STUDY_UID.encode() + suffix, tmp_path / "sloppy-uid.dcm")
    assert push_files([f], "127.0.0.1", node.port)[0].status == status.CANNOT_UNDERSTAND
    assert not [p for p in node.settings.instances_dir.rglob("*") if p.is_file()]
    assert node.flush_records() and node.store is not None
    with node.store.session() as s:
        assert s.scalars(select(Study)).all() == []
    # the same instance with its UID padded as DICOM pads it (one NUL) is stored under that UID
    f = _file_with_study_uid(ds, STUDY_UID.encode(), tmp_path / "padded-uid.dcm")
    assert push_files([f], "127.0.0.1", node.port)[0].status == status.SUCCESS
    assert node.flush_records()
    [row] = study_instances(node.store, STUDY_UID)
    assert Path(row.path).parent.parent.name == STUDY_UID
