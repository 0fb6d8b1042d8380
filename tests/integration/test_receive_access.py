"""Who may associate: calling-AE allow list, called AE, association limit, TLS with client certificates.

Real associations on loopback; a refused peer gets an A-ASSOCIATE-RJ (or no TLS session) and the
node logs why, with AE titles and addresses only.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.testing.phantoms import make_phantom
from tests.support import wait_until


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(host="127.0.0.1", port=0, storage_dir=tmp_path / "node", quiet_seconds=3600, **kw)


def _associate(port: int, calling: str = "MODALITY", called: str = "DICOMNODE", tls: Any = None) -> Any:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls)


def _echo(port: int, **kw: Any) -> bool:
    assoc = _associate(port, **kw)
    try:
        return bool(assoc.is_established and assoc.send_c_echo().Status == status.SUCCESS)
    finally:
        if assoc.is_established:
            assoc.release()


def _rejection(assoc: Any) -> tuple[int, int, int] | None:
    """(result, source, reason) of an A-ASSOCIATE-RJ, or None if there was none."""
    if not assoc.is_rejected:
        return None
    rj = assoc.acceptor.primitive
    return (rj.result, rj.result_source, rj.diagnostic)


def test_calling_ae_not_on_the_allow_list_is_rejected_and_logged(
    tmp_path: Path, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    node = node_factory(_settings(tmp_path, allowed_calling_aes=("CT01", "DX02")))
    assoc = _associate(node.port, calling="INTRUDER")
    assert _rejection(assoc) == (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
    assert _echo(node.port, calling="DX02")
    [line] = [e for e in logs if e["event"] == "association.rejected"]
    assert line["reason"] == "calling ae not allowed" and line["calling_ae"] == "INTRUDER"
    assert line["log_level"] == "warning" and line["peer"] == "127.0.0.1"


def test_empty_allow_list_accepts_any_calling_ae(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = node_factory(_settings(tmp_path))
    assert _echo(node.port, calling="ANYONE") and _echo(node.port, calling="SOMEONE-ELSE")


def test_wrong_called_ae_is_rejected(
    tmp_path: Path, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    node = node_factory(_settings(tmp_path))
    assert _rejection(_associate(node.port, called="NOTUS")) == (0x01, 0x01, 0x07)
    [line] = [e for e in logs if e["event"] == "association.rejected"]
    assert line["reason"] == "called ae is not ours" and line["called_ae"] == "NOTUS"


def test_associations_beyond_the_limit_are_rejected_transiently(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = node_factory(_settings(tmp_path, max_associations=2))
    held = [_associate(node.port) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        # transient, service provider (presentation), local limit exceeded: the sender retries later
        assert _rejection(_associate(node.port)) == (0x02, 0x03, 0x02)
    finally:
        for a in held:
            a.release()
    assert _echo(node.port)


# --------------------------------------------------------------------------------------------
# TLS


def _self_signed(dir_: Path, name: str, cn: str) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    cert, key = dir_ / f"{name}.crt", dir_ / f"{name}.key"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}",
            "-addext", f"subjectAltName=DNS:{cn},IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_node(tmp_path: Path, node_factory: Callable[[Settings], Node]) -> tuple[Node, dict[str, Path]]:
    """A node on TLS that requires a client certificate signed by ``client.crt`` (self-signed)."""
    server_cert, server_key = _self_signed(tmp_path, "server", "localhost")
    client_cert, client_key = _self_signed(tmp_path, "client", "modality")
    stranger_cert, stranger_key = _self_signed(tmp_path, "stranger", "stranger")
    node = node_factory(
        _settings(
            tmp_path, tls_cert=server_cert, tls_key=server_key, tls_ca=client_cert, acse_timeout_seconds=5
        )
    )
    files = dict(
        server=server_cert,
        client=client_cert,
        client_key=client_key,
        stranger=stranger_cert,
        stranger_key=stranger_key,
    )
    return node, files


def _client_tls(files: dict[str, Path], who: str | None) -> tuple[ssl.SSLContext, str]:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files["server"]))
    if who is not None:
        ctx.load_cert_chain(str(files[who]), str(files[f"{who}_key"]))
    return ctx, "localhost"


def test_tls_with_a_trusted_client_certificate_stores_and_echoes(
    tls_node: tuple[Node, dict[str, Path]], tmp_path: Path
) -> None:
    node, files = tls_node
    assert _echo(node.port, tls=_client_tls(files, "client"))
    ds = make_phantom(np.random.default_rng(11), False, size=64)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE", tls_args=_client_tls(files, "client"))
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == status.SUCCESS
    finally:
        assoc.release()
    assert list(node.settings.instances_dir.rglob(f"{ds.SOPInstanceUID}.dcm"))


@pytest.mark.parametrize("who", [None, "stranger"])
def test_tls_without_a_trusted_client_certificate_gets_no_association(
    tls_node: tuple[Node, dict[str, Path]], who: str | None, logs: list[dict[str, Any]]
) -> None:
    node, files = tls_node
    assert not _echo(node.port, tls=_client_tls(files, who))
    # the handshake runs on the association's own thread: its log line may follow the refusal
    wait_until(lambda: any(e["event"] == "tls.handshake_failed" for e in logs), 5, "the handshake failure log")
    assert _echo(node.port, tls=_client_tls(files, "client"))


def test_plain_tcp_to_a_tls_port_gets_no_association_and_node_stays_up(
    tls_node: tuple[Node, dict[str, Path]], tmp_path: Path
) -> None:
    node, files = tls_node
    assert not _echo(node.port)
    f = tmp_path / "plain.dcm"
    make_phantom(np.random.default_rng(12), False, size=64).save_as(f, enforce_file_format=True)
    with pytest.raises(ConnectionError):
        push_files([f], "127.0.0.1", node.port, timeout=5)
    assert _echo(node.port, tls=_client_tls(files, "client"))


def test_silent_association_is_dropped_after_the_network_timeout(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = node_factory(_settings(tmp_path, network_timeout_seconds=1))
    assoc = _associate(node.port)
    assert assoc.is_established
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.1)
    assert assoc.is_aborted, "an idle association outlived DICOMNODE_NETWORK_TIMEOUT_SECONDS"
    assert _echo(node.port)


def test_cli_echo_speaks_tls_as_the_nodes_health_check(tls_node: tuple[Node, dict[str, Path]]) -> None:
    node, files = tls_node
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    echo = [sys.executable, "-m", "dicomnode", "echo", "--port", str(node.port), "--timeout", "5"]

    def run(extra: list[str], **more_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            echo + extra, env={**env, **more_env}, capture_output=True, text=True, timeout=60
        )

    verified = run(
        [
            "--tls",
            "on",
            "--cert",
            str(files["client"]),
            "--key",
            str(files["client_key"]),
            "--ca",
            str(files["server"]),
        ]
    )
    assert verified.returncode == 0 and "C-ECHO: success" in verified.stdout, verified.stderr[-2000:]
    # inside the node's container: TLS and the certificate come from the node's own settings
    health = run([], DICOMNODE_TLS_CERT=str(files["client"]), DICOMNODE_TLS_KEY=str(files["client_key"]))
    assert health.returncode == 0, health.stderr[-2000:]
    plain = run(["--tls", "off"])
    assert plain.returncode == 1 and "no association" in plain.stderr
    stranger = run(["--tls", "on", "--cert", str(files["stranger"]), "--key", str(files["stranger_key"])])
    assert stranger.returncode == 1
