"""DICOMweb without servers: ``stow+`` destinations in the settings, the STOW-RS answer both ways,
and a STOW-RS body read part by part into the receive folder (what a hostile body leaves: nothing).

The real round trips (our service, Orthanc's DICOMweb plugin) are tests/integration/test_dicomweb_stow.py.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset

from dicomnode.config import ConfigError, Settings, load_settings, parse_destinations
from dicomnode.delivery.stow import SOP_CLASS_NOT_SUPPORTED, results_from_response
from dicomnode.dicomweb import BodyError, PartOutcome, StowBody, stow_response
from dicomnode.net import StoreRequest, status
from dicomnode.testing.phantoms import write_phantom_studies

BOUNDARY = b"dicomnode-test-boundary"


def multipart(parts: list[bytes], *, kind: bytes = b"application/dicom", close: bool = True) -> bytes:
    """A multipart/related body (RFC 2387) of ``parts``, each with a Content-Type header."""
    body = b"".join(
        b"--" + BOUNDARY + b"\r\nContent-Type: " + kind + b"\r\n\r\n" + p + b"\r\n" for p in parts
    )
    return body + (b"--" + BOUNDARY + b"--\r\n" if close else b"")


@pytest.fixture
def phantom(tmp_path: Path) -> Path:
    return write_phantom_studies(tmp_path / "in", 1, seed=2, size=64)[0].paths[0]


class Kept:
    """The node's C-STORE callback stand-in: keeps (moves) each file handed to it, answers Success."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.requests: list[StoreRequest] = []

    def __call__(self, req: StoreRequest) -> int:
        self.where.mkdir(exist_ok=True)
        req.path.rename(self.where / f"{req.sop_instance_uid}.dcm")
        self.requests.append(req)
        return status.SUCCESS


def read_body(tmp_path: Path, body: bytes, *, chunk: int = 1000, **kw: object) -> tuple[StowBody, Kept]:
    incoming = tmp_path / "incoming"
    incoming.mkdir(exist_ok=True)
    kept = Kept(tmp_path / "kept")
    reader = StowBody(BOUNDARY, incoming, kept, calling_ae="STOW-RS", **kw)  # type: ignore[arg-type]
    for i in range(0, len(body), chunk):
        reader.feed(body[i : i + chunk])
    reader.finish()
    return reader, kept


# --- settings ------------------------------------------------------------------------------


def test_stow_destination_parses_prints_and_passes_to_a_worker(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    dests = parse_destinations(f"stow+https://pacs.example.org/dicom-web/?ca={ca},PACS@10.0.0.5:104")
    stow, dimse = dests
    assert stow.is_stow and not dimse.is_stow
    assert str(stow) == "stow+https://pacs.example.org/dicom-web"  # the name in SQL: no options
    assert (stow.host, stow.port, stow.tls, stow.tls_ca) == ("pacs.example.org", 443, True, ca)
    s = Settings(destinations=dests, stow_token="s3cret")
    assert load_settings(env=s.to_env()).destinations == dests
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("stow+ftp://pacs/dicom-web", "http or https"),
        ("stow+https://user:pw@pacs/dicom-web", "DICOMNODE_STOW_BASIC_AUTH"),
        ("stow+http://pacs/dicom-web?ca=/etc/hostname", "need an https URL"),
        ("stow+https://pacs/dicom-web?name=x", "name= is for DICOM TLS"),
        ("stow+https://pacs/" + "x" * 130, "123 characters"),
    ],
)
def test_bad_stow_destination_is_refused_with_the_fix(entry: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as err:
        parse_destinations(entry)
    assert "pw" not in str(err.value)  # a password in the URL is not repeated


def test_stow_service_off_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="DICOMNODE_DICOMWEB_TOKEN"):
        Settings().with_overrides(dicomweb_port=8080, dicomweb_host="0.0.0.0")
    assert (
        Settings()
        .with_overrides(dicomweb_port=8080, dicomweb_host="0.0.0.0", dicomweb_token="t")
        .dicomweb_port
    )
    with pytest.raises(ConfigError, match="user:password"):
        Settings().with_overrides(stow_basic_auth="nocolon")
    with pytest.raises(ConfigError, match="not both"):
        Settings().with_overrides(stow_basic_auth="a:b", stow_token="t")


# --- the STOW-RS answer, both ways -----------------------------------------------------------


def _ds(uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = uid
    return ds


def test_answer_is_200_409_or_202_and_reads_back_per_object() -> None:
    stored = PartOutcome("1.2.840.10008.5.1.4.1.1.7", "1.2.3.1", status.SUCCESS)
    full = PartOutcome("1.2.840.10008.5.1.4.1.1.7", "1.2.3.2", status.OUT_OF_RESOURCES, "disk")
    assert stow_response([stored])[0] == 200
    assert stow_response([full])[0] == 409
    code, body = stow_response([stored, full])
    assert code == 202
    # what our sender makes of our own answer
    results = results_from_response(
        [_ds("1.2.3.1"), _ds("1.2.3.2"), _ds("1.2.3.3")],
        code,
        Dataset.from_json(body),
        destination="d",
        attempt=4,
    )
    assert [(r.success, r.status, r.attempt) for r in results] == [
        (True, 0x0000, 4),
        (False, 0xA700, 4),
        (False, None, 4),  # not listed under 202: not stored
    ]
    assert "0xA700" in (results[1].error or "")


def test_unlisted_objects_count_as_stored_only_under_200() -> None:
    (ok,) = results_from_response([_ds("1.2.3.1")], 200, Dataset(), destination="d", attempt=1)
    assert ok.success
    (refused,) = results_from_response([_ds("1.2.3.1")], 409, Dataset(), destination="d", attempt=1)
    assert not refused.success


def test_sop_class_refusal_is_recognised_for_the_fallback() -> None:
    body = Dataset()
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.1"
    item.FailureReason = SOP_CLASS_NOT_SUPPORTED
    body.FailedSOPSequence = [item]
    (r,) = results_from_response([_ds("1.2.3.1")], 409, body, destination="d", attempt=1)
    assert (r.success, r.status) == (False, 0x0122)


# --- a STOW-RS body, part by part ----------------------------------------------------------------


@pytest.mark.parametrize("chunk", [777, 1 << 20], ids=["small-chunks", "one-chunk"])
def test_parts_reach_the_store_callback_with_our_file_meta_and_the_data_set_unchanged(
    tmp_path: Path, phantom: Path, chunk: int
) -> None:
    raw = phantom.read_bytes()
    other = write_phantom_studies(tmp_path / "in2", 1, seed=9, size=256)[0].paths[0].read_bytes()  # > 64 KiB
    reader, kept = read_body(tmp_path, multipart([raw, other]), chunk=chunk)
    assert [o.status for o in reader.outcomes] == [0, 0]
    src = pydicom.dcmread(phantom)
    req = kept.requests[0]
    assert (req.calling_ae, req.sop_instance_uid, req.sop_class_uid) == (
        "STOW-RS",
        src.SOPInstanceUID,
        src.SOPClassUID,
    )
    got = pydicom.dcmread(kept.where / f"{src.SOPInstanceUID}.dcm")
    assert got.file_meta.SourceApplicationEntityTitle == "STOW-RS"
    assert got.PixelData == src.PixelData and got.PatientID == src.PatientID
    assert list((tmp_path / "incoming").iterdir()) == []


def test_truncated_body_is_400_and_leaves_no_file(tmp_path: Path, phantom: Path) -> None:
    body = multipart([phantom.read_bytes()], close=False)[:-500]
    with pytest.raises(BodyError, match="truncated") as err:
        read_body(tmp_path, body)
    assert err.value.http_status == 400
    assert list((tmp_path / "incoming").iterdir()) == []
    assert not (tmp_path / "kept").exists()


def test_part_over_the_limit_is_refused_0xA700_and_the_next_part_still_stored(
    tmp_path: Path, phantom: Path
) -> None:
    raw = phantom.read_bytes()
    big = write_phantom_studies(tmp_path / "big", 1, seed=4, size=512)[0].paths[0].read_bytes()
    reader, kept = read_body(tmp_path, multipart([big, raw]), max_part_bytes=len(raw) + 1000)
    assert [o.status for o in reader.outcomes] == [status.OUT_OF_RESOURCES, status.SUCCESS]
    assert "DICOMNODE_MAX_DATASET_BYTES" in reader.outcomes[0].reason
    assert len(kept.requests) == 1
    assert list((tmp_path / "incoming").iterdir()) == []


@pytest.mark.parametrize(
    ("part", "kind"),
    [
        (b"not dicom at all" * 20, b"application/dicom"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\xff\xff\xff\x7f", b"application/dicom"),
        (b"tiny", b"application/dicom"),
        (b"{}", b"application/json"),
    ],
    ids=["no-preamble", "huge-meta-length", "too-short", "json-part"],
)
def test_a_part_that_is_no_part10_file_is_refused_unstored(tmp_path: Path, part: bytes, kind: bytes) -> None:
    reader, kept = read_body(tmp_path, multipart([part], kind=kind))
    (outcome,) = reader.outcomes
    assert outcome.status in (status.CANNOT_UNDERSTAND, status.SOP_CLASS_NOT_SUPPORTED)
    assert kept.requests == []
    assert list((tmp_path / "incoming").iterdir()) == []


def test_instance_of_another_study_than_the_url_is_refused_0xA900(tmp_path: Path, phantom: Path) -> None:
    reader, kept = read_body(tmp_path, multipart([phantom.read_bytes()]), study_uid="1.2.3.4")
    assert [o.status for o in reader.outcomes] == [status.DATASET_DOES_NOT_MATCH_SOP_CLASS]
    assert kept.requests == []
    assert list((tmp_path / "incoming").iterdir()) == []


def test_body_that_is_no_multipart_is_400(tmp_path: Path) -> None:
    with pytest.raises(BodyError) as err:
        read_body(tmp_path, b"garbage without any boundary" * 10)
    assert err.value.http_status == 400


def test_too_many_parts_is_413(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dicomnode.dicomweb.parts.MAX_PARTS", 3)
    with pytest.raises(BodyError, match="more than 3 parts") as err:
        read_body(tmp_path, multipart([b"x" * 10] * 5))
    assert err.value.http_status == 413
