"""DICOMweb STOW-RS both ways, against Orthanc with its DICOMweb plugin (issue 17).

- In: Orthanc, given our service as a DICOMweb server (``DicomWeb.Servers``), STOWs a study to
  the node (``POST /dicom-web/servers/node/stow``); the node stores it on the C-STORE path
  (calling AE ``STOW-RS`` in SQL), analyses it and delivers the results,
- out: to Orthanc's ``/dicom-web`` over STOW-RS (a ``stow+http://`` destination): the SR and SC
  appear in Orthanc's study; a late image makes a revision, a second SR naming the first;
- a destination that is down is retried (attempts recorded, the destination down) and, once a
  QIDO-RS query answers again, delivered;
- hostile requests (no token, another media type, too large, a part over the limit, a truncated
  body) get a clear 4xx, leave no file and no row, and the node goes on;
- over HTTPS (``ca=``, bearer token) to another node's STOW-RS service, and a certificate the CA
  did not sign gets nothing; a server refusing 3D SR gets Enhanced SR, basic auth is sent, and
  reachability is a QIDO-RS query.
"""

from __future__ import annotations

import base64
import http.client
import io
import os
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import Comprehensive3DSRStorage, EnhancedSRStorage, generate_uid
from python_multipart.multipart import parse_options_header
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicomnode.config import Settings, parse_destinations
from dicomnode.delivery.push import push_files
from dicomnode.delivery.retract import retract_version
from dicomnode.delivery.sender import enhanced_sr_fallback
from dicomnode.delivery.stow import StowAuth, reachable
from dicomnode.delivery.stow import send_once as stow_send_once
from dicomnode.dicomweb import StowBody, StowServer, stow_response
from dicomnode.net import StoreRequest, status
from dicomnode.node import Node
from dicomnode.store.db import Store
from dicomnode.store.models import DeliveryAttempt, Event, Instance, StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.phantoms import write_phantom_studies
from tests.conftest import need_tool
from tests.integration.orthanc import DICOMWEB_PLUGIN, Orthanc
from tests.integration.test_receive_access import _self_signed
from tests.support import echo_ok, free_port, wait_until
from tests.tiny_model import write_tiny_model

TOKEN = "stow-test-token"
BOUNDARY = "dicomnode-test-boundary"


def _orthanc(tmp_path: Path, node_stow_port: int | None = None) -> Orthanc:
    binary = need_tool("Orthanc")
    if not DICOMWEB_PLUGIN.is_file():
        if os.environ.get("CI"):
            pytest.fail("orthanc-dicomweb is not installed: `make peers` installs it")
        pytest.skip("orthanc-dicomweb not installed")
    dicomweb: dict[str, object] = {"Enable": True, "Root": "/dicom-web/"}
    if node_stow_port is not None:
        dicomweb["Servers"] = {
            "node": {
                "Url": f"http://127.0.0.1:{node_stow_port}/",
                "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
            }
        }
    return Orthanc(
        binary,
        tmp_path / "orthanc",
        dicom_port=free_port(),
        plugins=(DICOMWEB_PLUGIN,),
        extra={"DicomWeb": dicomweb},
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny model for the module's nodes (writing it takes seconds)."""
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def _settings(tmp_path: Path, model: Path, **over: object) -> Settings:
    base: dict[str, object] = dict(
        ae_title="DICOMNODE",
        host="127.0.0.1",
        port=0,
        storage_dir=tmp_path / "node",
        quiet_seconds=0.5,
        model=model,
        delivery_backoff_seconds=0.2,
        delivery_backoff_max_seconds=1.0,
        metrics_port=0,
    )
    base.update(over)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def store_of() -> Iterator[Callable[[Settings], Store]]:
    stores: list[Store] = []

    def open_(settings: Settings) -> Store:
        stores.append(Store(settings.effective_database_url))
        return stores[-1]

    yield open_
    for s in stores:
        s.dispose()


def _orthanc_sop_uids(orthanc: Orthanc, study_uid: str) -> set[str]:
    return {str(t["SOPInstanceUID"]) for t in orthanc.study_instances(orthanc.study_id(study_uid))}


def _orthanc_file(orthanc: Orthanc, sop_uid: str) -> pydicom.Dataset:
    (hit,) = [h for h in orthanc.post("/tools/lookup", sop_uid) if h["Type"] == "Instance"]
    with urllib.request.urlopen(f"{orthanc.base_url}/instances/{hit['ID']}/file", timeout=30) as rsp:
        return pydicom.dcmread(io.BytesIO(rsp.read()))


@pytest.mark.process  # Orthanc / openssl
def test_orthanc_stows_a_study_in_and_gets_its_results_back_over_stow_rs(
    tmp_path: Path,
    tiny_model: Path,
    node_factory: Callable[[Settings], Node],
    store_of: Callable[[Settings], Store],
) -> None:
    stow_port = free_port()
    orthanc = _orthanc(tmp_path, node_stow_port=stow_port)
    settings = _settings(
        tmp_path,
        tiny_model,
        dicomweb_port=stow_port,
        dicomweb_token=TOKEN,
        destinations=parse_destinations(f"stow+http://127.0.0.1:{orthanc.http_port}/dicom-web"),
        delivery_attempts=3,
    )
    study = write_phantom_studies(tmp_path / "in", 1, seed=5, positive_fraction=0.0, size=256)[0]
    late = pydicom.dcmread(study.paths[0])
    late.PixelData = (late.pixel_array.max() - late.pixel_array).astype(late.pixel_array.dtype).tobytes()
    late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    late.InstanceNumber = 2
    late.save_as(tmp_path / "late.dcm", enforce_file_format=True)
    with orthanc:
        store = store_of(settings)
        node_factory(settings)
        first_id = orthanc.upload(study.paths[0])["ID"]
        # Orthanc as the sender: its DICOMweb client STOWs the instance to our service
        orthanc.post("/dicom-web/servers/node/stow", {"Resources": [first_id], "Synchronous": True})
        wait_until(
            lambda: study_state(store, study.study_uid) is StudyState.DELIVERED, 60, "delivered over STOW-RS"
        )
        first = latest_analysis(store, study.study_uid)
        assert first is not None and first.sr_sop_instance_uid and first.sc_sop_instance_uid
        with store.session() as s:
            callers = set(s.scalars(select(Instance.calling_ae)).all())
        assert callers == {"STOW-RS"}
        assert {first.sr_sop_instance_uid, first.sc_sop_instance_uid} <= _orthanc_sop_uids(
            orthanc, study.study_uid
        )

        # a late image, STOWed alone, revises the result: a new SR naming the first, both kept
        late_id = orthanc.upload(tmp_path / "late.dcm")["ID"]
        orthanc.post("/dicom-web/servers/node/stow", {"Resources": [late_id], "Synchronous": True})

        def revised() -> bool:
            a = latest_analysis(store, study.study_uid)
            return (
                a is not None
                and a.id != first.id
                and study_state(store, study.study_uid) is StudyState.DELIVERED
            )

        wait_until(revised, 60, "revision delivered over STOW-RS")
        second = latest_analysis(store, study.study_uid)
        assert second is not None and second.sr_sop_instance_uid
        in_orthanc = _orthanc_sop_uids(orthanc, study.study_uid)
        assert {
            first.sr_sop_instance_uid,
            second.sr_sop_instance_uid,
            second.sc_sop_instance_uid,
        } <= in_orthanc
        new_sr = _orthanc_file(orthanc, second.sr_sop_instance_uid)
        (pred_study,) = new_sr.PredecessorDocumentsSequence
        (pred_series,) = pred_study.ReferencedSeriesSequence
        assert [p.ReferencedSOPInstanceUID for p in pred_series.ReferencedSOPSequence] == [
            first.sr_sop_instance_uid
        ]
        with store.session() as s:
            rows = s.scalars(select(DeliveryAttempt)).all()
            assert rows and all(r.destination == str(settings.destinations[0]) for r in rows)
            assert all(r.success and r.status == 0 for r in rows)
        # withdrawing the model version: the rejection note goes the same way
        (retraction,) = retract_version(settings, store, first.model_version)
        assert retraction.success, retraction.error
        assert retraction.note_sop_instance_uid in _orthanc_sop_uids(orthanc, study.study_uid)


@pytest.mark.process  # Orthanc / openssl
def test_stow_destination_down_is_retried_and_delivered_once_it_answers(
    tmp_path: Path,
    tiny_model: Path,
    node_factory: Callable[[Settings], Node],
    store_of: Callable[[Settings], Store],
) -> None:
    orthanc = _orthanc(tmp_path)  # not started yet: its HTTP port refuses connections
    settings = _settings(
        tmp_path,
        tiny_model,
        destinations=parse_destinations(f"stow+http://127.0.0.1:{orthanc.http_port}/dicom-web"),
        reconcile_interval_seconds=0.5,
        reconcile_after_seconds=0.5,
    )
    dest = str(settings.destinations[0])
    study = write_phantom_studies(tmp_path / "in", 1, seed=7, positive_fraction=1.0, size=128)[0]
    store = store_of(settings)
    node = node_factory(settings)
    assert [r.status for r in push_files(study.paths, "127.0.0.1", node.port)] == [0] * len(study.paths)

    def failed_twice() -> bool:
        with store.session() as s:
            rows = s.scalars(select(DeliveryAttempt).where(DeliveryAttempt.destination == dest)).all()
        return len({r.attempt for r in rows}) >= 2 and not any(r.success for r in rows)

    def down_recorded() -> bool:
        with store.session() as s:
            return bool(s.scalars(select(Event.id).where(Event.kind == "destination.down")).all())

    wait_until(failed_twice, 60, "failed STOW-RS attempts recorded")
    wait_until(down_recorded, 30, "destination.down recorded")
    with store.session() as s:
        failure = s.scalars(select(DeliveryAttempt).where(DeliveryAttempt.destination == dest)).first()
        assert (
            failure is not None
            and failure.status is None
            and "STOW-RS request failed" in (failure.error or "")
        )
    assert study_state(store, study.study_uid) is StudyState.ANALYSED
    with orthanc:
        wait_until(
            lambda: study_state(store, study.study_uid) is StudyState.DELIVERED,
            60,
            "delivered once Orthanc is up",
        )
        a = latest_analysis(store, study.study_uid)
        assert a is not None
        assert {a.sr_sop_instance_uid, a.sc_sop_instance_uid} <= _orthanc_sop_uids(orthanc, study.study_uid)
    with store.session() as s:
        assert s.scalars(select(Event.id).where(Event.kind == "destination.up")).all()


def _post(
    port: int, body: bytes, *, token: str | None = TOKEN, content_type: str | None = None
) -> requests.Response:
    headers = {
        "Content-Type": content_type or f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"http://127.0.0.1:{port}/studies", data=body, headers=headers, timeout=30)


def _multipart(parts: list[bytes], close: bool = True) -> bytes:
    b = BOUNDARY.encode()
    body = b"".join(b"--" + b + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts)
    return body + (b"--" + b + b"--\r\n" if close else b"")


def test_hostile_stow_requests_get_4xx_keep_nothing_and_the_node_goes_on(
    tmp_path: Path,
    tiny_model: Path,
    node_factory: Callable[[Settings], Node],
    store_of: Callable[[Settings], Store],
) -> None:
    port = free_port()
    small = write_phantom_studies(tmp_path / "in", 1, seed=3, size=64)[0]
    raw = small.paths[0].read_bytes()
    big = write_phantom_studies(tmp_path / "big", 1, seed=4, size=512)[0].paths[0].read_bytes()
    settings = _settings(
        tmp_path,
        tiny_model,
        dicomweb_port=port,
        dicomweb_token=TOKEN,
        max_dataset_bytes=len(raw) + 4096,
        dicomweb_max_request_bytes=4 * len(big),
    )
    store = store_of(settings)
    node = node_factory(settings)

    assert _post(port, _multipart([raw]), token=None).status_code == 401
    assert _post(port, _multipart([raw]), token="wrong").status_code == 401
    rsp = _post(port, raw, content_type="application/dicom")
    assert rsp.status_code == 415 and "multipart/related" in rsp.text
    # a part over DICOMNODE_MAX_DATASET_BYTES: refused 0xA700 (none stored: 409)
    rsp = _post(port, _multipart([big]))
    assert rsp.status_code == 409, rsp.text
    (failed,) = rsp.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA700]
    # truncated: the part in progress is dropped
    rsp = _post(port, _multipart([raw], close=False)[:-100])
    assert rsp.status_code == 400 and "truncated" in rsp.text
    # a declared length over the request limit is refused unread
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/studies")
    conn.putheader("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Length", str(100 * len(big)))
    conn.endheaders()
    answer = conn.getresponse()
    assert answer.status == 413 and b"DICOMNODE_DICOMWEB_MAX_REQUEST_BYTES" in answer.read()
    conn.close()
    # a chunked body (no declared length) that grows past it is cut off
    huge = _multipart([big] * 8)
    rsp = requests.post(
        f"http://127.0.0.1:{port}/studies",
        data=iter([huge[i : i + 65536] for i in range(0, len(huge), 65536)]),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Authorization": f"Bearer {TOKEN}",
        },
        timeout=30,
    )
    assert rsp.status_code == 413

    assert node.flush_records()
    with store.session() as s:
        assert s.scalars(select(Instance.id)).all() == []
    assert [p for p in settings.instances_dir.rglob("*") if p.is_file()] == []
    assert list(node.incoming_dir.iterdir()) == []
    # the node goes on: DICOM and STOW-RS both still serve
    assert echo_ok(node.port)
    rsp = _post(port, _multipart([raw]))
    assert rsp.status_code == 200, rsp.text
    assert node.flush_records()
    with store.session() as s:
        assert s.scalars(select(Instance.sop_instance_uid)).all() == [
            pydicom.dcmread(small.paths[0]).SOPInstanceUID
        ]


@pytest.mark.process  # Orthanc / openssl
def test_results_go_over_https_to_a_stow_rs_service_whose_certificate_the_ca_signed(
    tmp_path: Path,
    tiny_model: Path,
    node_factory: Callable[[Settings], Node],
    store_of: Callable[[Settings], Store],
) -> None:
    server_cert, server_key = _self_signed(tmp_path, "server", "localhost")
    stranger_cert, _ = _self_signed(tmp_path, "stranger", "stranger")
    stow_port = free_port()
    receiver_settings = _settings(
        tmp_path / "receiver",
        tiny_model,
        tls_cert=server_cert,
        tls_key=server_key,
        dicomweb_port=stow_port,
        dicomweb_token=TOKEN,
    )
    node_factory(receiver_settings)
    receiver_store = store_of(receiver_settings)
    url = f"stow+https://127.0.0.1:{stow_port}"
    sender_settings = _settings(
        tmp_path / "sender",
        tiny_model,
        destinations=parse_destinations(f"{url}?ca={server_cert}"),
        stow_token=TOKEN,
        delivery_attempts=2,
    )
    sender_store = store_of(sender_settings)
    sender = node_factory(sender_settings)
    study = write_phantom_studies(tmp_path / "in", 1, seed=8, size=128)[0]
    assert [r.status for r in push_files(study.paths, "127.0.0.1", sender.port)] == [0]
    wait_until(
        lambda: study_state(sender_store, study.study_uid) is StudyState.DELIVERED, 60, "delivered over HTTPS"
    )
    a = latest_analysis(sender_store, study.study_uid)
    assert a is not None
    with receiver_store.session() as s:
        got = {(r.sop_instance_uid, r.calling_ae) for r in s.scalars(select(Instance)).all()}
    assert got == {(a.sr_sop_instance_uid, "STOW-RS"), (a.sc_sop_instance_uid, "STOW-RS")}

    # a certificate the destination's CA did not sign: nothing goes, the error says where to look
    (wrong,) = parse_destinations(f"{url}?ca={stranger_cert}")
    results = stow_send_once(
        [pydicom.dcmread(study.paths[0])], wrong, auth=StowAuth(token=TOKEN), connect_timeout=5, deadline=10
    )
    assert [(r.success, r.status) for r in results] == [(False, None)]
    assert "ca=" in (results[0].error or "")


def test_stow_sender_falls_back_to_enhanced_sr_sends_basic_auth_and_checks_reachability(
    tmp_path: Path,
) -> None:
    """Against a STOW-RS server that refuses 3D SR (Failure Reason 0x0122) and asks for basic
    auth: the 3D SR goes again as Enhanced SR; wrong credentials fail with a hint; QIDO-RS decides
    reachability. The server is our own STOW-RS reader behind a stricter store callback."""
    stored: list[str] = []
    basic = "Basic " + base64.b64encode(b"node:s3cret").decode()
    (tmp_path / "rx").mkdir()

    def strict_store(req: StoreRequest) -> int:
        if req.sop_class_uid == str(Comprehensive3DSRStorage):
            return status.SOP_CLASS_NOT_SUPPORTED
        stored.append(req.sop_class_uid)
        return status.SUCCESS

    async def stow(request: Request) -> Response:
        if request.headers.get("authorization") != basic:
            return Response(status_code=401)
        _, params = parse_options_header(request.headers["content-type"])
        reader = StowBody(params[b"boundary"], tmp_path / "rx", strict_store, calling_ae="X")
        async for chunk in request.stream():
            reader.feed(chunk)
        reader.finish()
        code, body = stow_response(reader.outcomes)
        return JSONResponse(body, status_code=code, media_type="application/dicom+json")

    async def qido(request: Request) -> Response:
        return JSONResponse([], media_type="application/dicom+json")

    app = Starlette(routes=[Route("/web/studies", stow, methods=["POST"]), Route("/web/studies", qido)])
    server = StowServer(app, "127.0.0.1", free_port()).start()
    try:
        (dest,) = parse_destinations(f"stow+http://127.0.0.1:{server.port}/web")
        phantom = write_phantom_studies(tmp_path / "in", 1, seed=1, size=64)[0].paths[0]
        sc = pydicom.dcmread(phantom)
        sr = pydicom.dcmread(phantom)
        sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = Comprehensive3DSRStorage
        sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        results = stow_send_once(
            [sr, sc], dest, auth=StowAuth(basic="node:s3cret"), fallback=enhanced_sr_fallback, deadline=10
        )
        assert [(r.success, r.status) for r in results] == [(True, 0), (True, 0)]
        assert sorted(stored) == sorted([str(EnhancedSRStorage), str(sc.SOPClassUID)])
        refused = stow_send_once([sc], dest, auth=StowAuth(basic="node:wrong"), deadline=10)
        assert [(r.success, r.status) for r in refused] == [(False, None)]
        assert "401" in (refused[0].error or "") and "DICOMNODE_STOW_BASIC_AUTH" in (refused[0].error or "")
        assert reachable(dest, auth=StowAuth(basic="node:s3cret"))
        (nowhere,) = parse_destinations(f"stow+http://127.0.0.1:{server.port}/elsewhere")
        assert not reachable(nowhere)
    finally:
        server.stop(timeout=2)
