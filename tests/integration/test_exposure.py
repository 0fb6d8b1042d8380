"""What the node exposes on the network: ``/metrics`` on loopback unless told otherwise, and a TLS
port that refuses the CBC cipher suites TLS 1.2 still allows (BCP 195: AEAD suites only).

Real sockets on loopback: the metrics HTTP server, and the SCP's TLS context against a real
``ssl`` client.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from dicomnode.config import Settings
from dicomnode.net.tls import server_tls_context
from dicomnode.ops.metrics import start_metrics_server
from dicomnode.store.db import Store


def test_metrics_listen_on_loopback_by_default(tmp_path: Path) -> None:
    settings = Settings(storage_dir=tmp_path / "node")  # DICOMNODE_HOST stays 0.0.0.0
    store = Store(settings.effective_database_url)
    server = start_metrics_server(settings, store, port=0)
    try:
        assert server.host == "127.0.0.1"
        assert server.httpd.socket.getsockname()[0] == "127.0.0.1"
    finally:
        server.stop()
        store.dispose()


def test_metrics_host_opens_them_where_a_scraper_needs_them(tmp_path: Path) -> None:
    settings = Settings(storage_dir=tmp_path / "node", metrics_host="0.0.0.0")  # as compose.yaml sets it
    store = Store(settings.effective_database_url)
    server = start_metrics_server(settings, store, port=0)
    try:
        assert server.host == "0.0.0.0"
    finally:
        server.stop()
        store.dispose()


# --------------------------------------------------------------------------------------------
# TLS cipher suites


def _self_signed_ec(dir_: Path) -> tuple[Path, Path]:
    """A throwaway P-256 certificate for localhost (ECDSA, so both ECDHE-ECDSA suites apply)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    cert, key = dir_ / "server.crt", dir_ / "server.key"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _handshake(server_ctx: ssl.SSLContext, cert: Path, ciphers: str) -> tuple[str | None, str | None]:
    """One TLS 1.2 handshake on loopback offering only ``ciphers``: (the suite agreed or None, the
    server side's error or None)."""
    outcome: dict[str, Any] = {}
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                outcome["server"] = tls.cipher()
                tls.recv(1)  # until the client closes
        except (OSError, ValueError) as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(cert))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers(ciphers)
    agreed = None
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw:
            with client.wrap_socket(raw, server_hostname="localhost") as tls:
                agreed = tls.cipher()[0]
    except ssl.SSLError:
        pass
    finally:
        thread.join(timeout=5)
        listener.close()
    return agreed, outcome.get("error")


def test_tls_refuses_a_client_offering_only_cbc_suites(tmp_path: Path) -> None:
    cert, key = _self_signed_ec(tmp_path)
    ctx = server_tls_context(Settings(tls_cert=cert, tls_key=key, acse_timeout_seconds=5))
    assert ctx is not None
    agreed, error = _handshake(ctx, cert, "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384")
    assert agreed is None
    assert error is not None and "NO_SHARED_CIPHER" in error.upper().replace(" ", "_")


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_tls_1_2_with_an_aead_suite_is_accepted(tmp_path: Path, suite: str) -> None:
    cert, key = _self_signed_ec(tmp_path)
    ctx = server_tls_context(Settings(tls_cert=cert, tls_key=key, acse_timeout_seconds=5))
    assert ctx is not None
    agreed, error = _handshake(ctx, cert, suite)
    assert (agreed, error) == (suite, None)
