"""Every file that ships inside pydicom, pushed by a real SCU to our SCP.

pydicom's ``data/test_files`` holds real-world and deliberately odd objects: CT, MR, US, RT, SR,
big endian, deflate, RLE, JPEG, JPEG-LS, JPEG 2000, files without file meta, DICOMDIRs and a
few files that are not DICOM at all. Each DICOM file is sent in its own transfer syntax as its own
bytes (one association each); a file without file meta is wrapped with one first. Each must be
stored with Success or refused with a status this node documents; the node must stay up. The
outcome table goes to the terminal (whatever ``-s`` says) and to ``pydicom-corpus.txt`` in the
test's tmp folder.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.store.models import Instance
from tests.support import echo_ok

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"
NOT_DICOM_SUFFIXES = {".txt", ".json", ".dump", ".icc", ".gz", ".py"}
#: The statuses our C-STORE handler documents (dicomnode.net.status).
DOCUMENTED = {
    status.SUCCESS,
    status.SOP_CLASS_NOT_SUPPORTED,
    status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    status.CANNOT_UNDERSTAND,
    status.OUT_OF_RESOURCES,
}


def _wrap_without_meta(path: Path, out_dir: Path) -> tuple[Path | None, str]:
    """A Part 10 copy of a data set stored without file meta, or (None, why it cannot be sent)."""
    ds = pydicom.dcmread(path, force=True)
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        return None, "no SOP Class/Instance UID: not sendable by an SCU"
    implicit, little = ds.original_encoding
    ts = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    ds.file_meta = meta
    out = out_dir / (path.name + ".wrapped.dcm")
    ds.save_as(out, implicit_vr=implicit, little_endian=little, enforce_file_format=True)
    return out, "wrapped with file meta"


def _send(path: Path, port: int) -> tuple[str, str, int | None, str]:
    """(SOP class, transfer syntax, status or None, note) of one file sent as its own bytes."""
    meta = read_file_meta_info(path)
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    ts = str(meta.get("TransferSyntaxUID", "") or "")
    if not sop_class or not meta.get("MediaStorageSOPInstanceUID"):
        # a C-STORE-RQ needs both (PS3.7 9.3.1.1); test_receive_bad_input sends one without anyway
        return sop_class, ts, None, "not sendable by an SCU: file meta has no SOP Class/Instance UID"
    ae = AE(ae_title="CORPUS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.maximum_pdu_size = 0
    try:
        ae.add_requested_context(sop_class, [ts])
    except ValueError as exc:
        return sop_class, ts, None, f"not sendable by an SCU: {exc}"
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    if not assoc.is_established:
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            # e.g. a DICOMDIR: Media Storage Directory is a media object (PS3.10), not a network one
            return sop_class, ts, None, "not sent: presentation context rejected (not a storage SOP class)"
        return sop_class, ts, None, "association failed"
    try:
        try:
            rsp = assoc.send_c_store(path)
        except (ValueError, AttributeError, TypeError) as exc:
            return sop_class, ts, None, f"not sendable by an SCU: {str(exc)[:60]}"
        st = int(rsp.Status) if rsp is not None and "Status" in rsp else None
        return sop_class, ts, st, "" if st is not None else "no response (association lost)"
    finally:
        if assoc.is_established:
            assoc.release()


def _name(uid: str) -> str:
    u = UID(uid) if uid else None
    return (u.name if u is not None and u.name != uid else uid)[:38] or "-"


def test_every_pydicom_test_file_is_stored_or_refused_with_a_documented_status(
    tmp_path: Path,
    node_factory: Callable[[Settings], Node],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send each file's own bytes
    node = node_factory(Settings(host="127.0.0.1", port=0, storage_dir=tmp_path / "node", quiet_seconds=3600))
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file())
    assert len(files) > 150, f"pydicom ships {len(files)} test files here; expected its full set"
    wrapped_dir = tmp_path / "wrapped"
    wrapped_dir.mkdir()
    rows: list[tuple[str, str, str, str]] = []
    outcomes: collections.Counter[str] = collections.Counter()
    undocumented: list[str] = []
    stored_uids: set[str] = set()
    for path in files:
        rel = str(path.relative_to(CORPUS))
        if path.suffix.lower() in NOT_DICOM_SUFFIXES or path.name.startswith("README"):
            outcomes["not DICOM (skipped)"] += 1
            rows.append((rel, "-", "-", "not DICOM: not sent"))
            continue
        note = ""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                meta = read_file_meta_info(path)
                to_send: Path | None = path if "TransferSyntaxUID" in meta else None
            except Exception:
                to_send = None
            if to_send is None:
                to_send, note = _wrap_without_meta(path, wrapped_dir)
            if to_send is None:
                outcomes["not sendable by an SCU"] += 1
                rows.append((rel, "-", "-", note))
                continue
            sop_class, ts, st, why = _send(to_send, node.port)
        if st is None:
            if why.startswith("not sendable"):
                outcomes["not sendable by an SCU"] += 1
            elif why.startswith("not sent: presentation context rejected"):
                outcomes["context rejected (DICOMDIR)"] += 1
            else:  # the node dropped the association or never answered: a failure of ours
                undocumented.append(f"{rel}: {why}")
                outcomes[why] += 1
            rows.append((rel, _name(sop_class), _name(ts), why))
            continue
        if st not in DOCUMENTED:
            undocumented.append(f"{rel}: 0x{st:04X}")
        if st == status.SUCCESS:
            stored_uids.add(str(read_file_meta_info(to_send).MediaStorageSOPInstanceUID))
        label = f"0x{st:04X} {status.MEANINGS.get(st, 'UNDOCUMENTED')}"
        outcomes[label] += 1
        rows.append((rel, _name(sop_class), _name(ts), label + (f" ({note})" if note else "")))

    width = max(len(r[0]) for r in rows)
    table = [f"{'file':<{width}}  {'SOP class':<38}  {'transfer syntax':<38}  outcome", "-" * (width + 110)]
    table += [f"{f:<{width}}  {c:<38}  {t:<38}  {o}" for f, c, t, o in rows]
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
    table += ["", f"{len(files)} files: {summary}"]
    (tmp_path / "pydicom-corpus.txt").write_text("\n".join(table) + "\n")
    with capsys.disabled():
        print("\n" + "\n".join(table))

    assert not undocumented, f"undocumented outcomes: {undocumented}; summary: {summary}"
    assert outcomes["0x0000 Success"] >= 100, summary
    assert echo_ok(node.port), "the node stopped answering C-ECHO after the corpus"
    assert node.store is not None and node.flush_records()
    with node.store.session() as s:
        recorded = dict(s.execute(select(Instance.sop_instance_uid, Instance.path)).all())
    assert set(recorded) == stored_uids, summary
    assert all(Path(p).is_file() for p in recorded.values())


@pytest.mark.parametrize(
    "name",
    ["image_dfl.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "MR_small_implicit.dcm"],
)
def test_instance_is_stored_in_the_transfer_syntax_it_was_sent_in(
    name: str, tmp_path: Path, node_factory: Callable[[Settings], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deflate, big endian, RLE, JPEG 2000, implicit: kept as sent (no decode, no re-encode), and
    the stored file reads back to the same pixels."""
    from dicomnode.delivery.push import push_files

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    node = node_factory(Settings(host="127.0.0.1", port=0, storage_dir=tmp_path / "node", quiet_seconds=3600))
    src = CORPUS / name
    [res] = push_files([src], "127.0.0.1", node.port)
    assert res.status == status.SUCCESS
    sent = pydicom.dcmread(src)
    [stored] = list(node.settings.instances_dir.rglob(f"{sent.SOPInstanceUID}.dcm"))
    back = pydicom.dcmread(stored)
    assert back.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert back.SOPInstanceUID == sent.SOPInstanceUID
    assert (back.pixel_array == sent.pixel_array).all()
