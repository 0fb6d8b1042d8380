"""TLS to destinations (issue 14.7): per destination CA, client certificate and key.

Against the node's own TLS listener (which asks for a client certificate) and against DCMTK's
``storescp +tls`` (which requires one by default): results go out over TLS, the peer's certificate
is checked against the destination's CA, and a destination whose certificate the CA did not sign
gets nothing. The destination's name in SQL stays ``AE@host:port``.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import Settings, load_settings, parse_destinations
from dicomnode.delivery.push import push_files
from dicomnode.delivery.sender import send_once
from dicomnode.node import Node
from dicomnode.store.db import Store
from dicomnode.store.models import DeliveryAttempt, StudyState
from dicomnode.store.queries import instance_by_sop_uid, study_state
from dicomnode.testing.phantoms import write_phantom_studies
from tests.integration.test_receive_access import _self_signed
from tests.support import LoggedProcess, free_port, wait_until
from tests.tiny_model import write_tiny_model


def _node_settings(tmp_path: Path, name: str, **kw: object) -> Settings:
    return Settings(
        ae_title="DICOMNODE",
        host="127.0.0.1",
        port=0,
        storage_dir=tmp_path / name,
        quiet_seconds=0.5,
        model=write_tiny_model(tmp_path / f"{name}.onnx"),
        delivery_attempts=2,
        delivery_backoff_seconds=0.2,
        fsync=False,
    ).with_overrides(**kw)


def test_send_over_tls_to_the_nodes_own_listener_with_a_client_certificate(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    server_cert, server_key = _self_signed(tmp_path, "server", "localhost")
    client_cert, client_key = _self_signed(tmp_path, "client", "dicomnode")
    stranger_cert, _ = _self_signed(tmp_path, "stranger", "localhost")
    pacs = node_factory(
        _node_settings(tmp_path, "pacs", tls_cert=server_cert, tls_key=server_key, tls_ca=client_cert)
    )
    image = write_phantom_studies(tmp_path / "in", 1, seed=3, size=128)[0].paths[0]
    ds = pydicom.dcmread(image)
    base = f"DICOMNODE@127.0.0.1:{pacs.port}"
    (good,) = parse_destinations(
        f"{base}?ca={server_cert}&cert={client_cert}&key={client_key}&name=localhost"
    )
    (wrong_ca,) = parse_destinations(f"{base}?ca={stranger_cert}&cert={client_cert}&key={client_key}")
    (no_client_cert,) = parse_destinations(f"{base}?ca={server_cert}&name=localhost")
    (plain,) = parse_destinations(base)

    results = {
        name: send_once([ds], dest, calling_ae="DICOMNODE", connect_timeout=5, deadline=30, timeout=5)[0]
        for name, dest in (
            ("wrong_ca", wrong_ca),
            ("no_client_cert", no_client_cert),
            ("plain", plain),
            ("good", good),
        )
    }
    assert str(good) == base and good.spec().startswith(base + "?")
    assert results["good"].success and results["good"].status == 0, results["good"]
    for name in ("wrong_ca", "no_client_cert", "plain"):
        assert not results[name].success and results[name].status is None, (name, results[name])
    assert "over TLS: check the peer's certificate" in (results["wrong_ca"].error or ""), results["wrong_ca"]
    assert pacs.flush_records()
    assert instance_by_sop_uid(pacs.store, str(ds.SOPInstanceUID)) is not None  # type: ignore[arg-type]


def _storescp_tls(
    tmp_path: Path, server: tuple[Path, Path], client_ca: Path
) -> tuple[LoggedProcess, int, Path]:
    binary = shutil.which("storescp")
    if binary is None:
        pytest.skip("DCMTK storescp not installed")
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    key, cert = server[1], server[0]
    proc = LoggedProcess(
        [
            binary,
            "+tls",
            str(key),
            str(cert),
            "+cf",
            str(client_ca),
            "-aet",
            "STORESCP",
            "-od",
            str(out),
            str(port),
        ],
        {"PATH": "/usr/bin:/bin"},
        tmp_path / "storescp.log",
        cwd=tmp_path,
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    proc.wait_ready(listening, 20, "storescp +tls")
    return proc, port, out


def test_results_delivered_over_tls_to_dcmtk_storescp(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    server = _self_signed(tmp_path, "server", "localhost")
    client_cert, client_key = _self_signed(tmp_path, "client", "dicomnode")
    proc, port, out = _storescp_tls(tmp_path, server, client_cert)
    try:
        spec = f"STORESCP@127.0.0.1:{port}?ca={server[0]}&cert={client_cert}&key={client_key}&name=localhost"
        # the destination's TLS options survive the trip through the environment a worker gets
        settings = _node_settings(tmp_path, "node", destinations=parse_destinations(spec))
        assert load_settings(env=settings.to_env()).destinations == settings.destinations
        node = node_factory(settings)
        study = write_phantom_studies(tmp_path / "in", 1, seed=4, size=128)[0]
        assert [r.status for r in push_files(study.paths, "127.0.0.1", node.port)] == [0] * len(study.paths)
        store = Store(settings.effective_database_url, run_migrations=False)
        try:
            wait_until(
                lambda: study_state(store, study.study_uid) is StudyState.DELIVERED,
                60,
                f"delivered over TLS (storescp log: {proc.log()[-800:]})",
            )
            with store.session() as s:
                names = {a.destination for a in s.query(DeliveryAttempt).all()}
        finally:
            store.dispose()
    finally:
        proc.stop()
    received = sorted(out.iterdir())
    assert len(received) == 2, received  # the SR and the heatmap SC
    modalities = sorted(str(pydicom.dcmread(p).Modality) for p in received)
    assert modalities == ["OT", "SR"], modalities
    assert names == {f"STORESCP@127.0.0.1:{port}"}
