"""A client certificate tied to calling AE titles (issue 13.9, DICOMNODE_TLS_CLIENT_AES).

Real TLS associations on loopback: with the mapping set, a peer whose certificate the CA signed may
only associate as a calling AE listed for its certificate's subject CN; anything else gets an
A-ASSOCIATE-RJ (calling AE title not recognised) and one log line naming the certificate's CN.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicomnode.config import ConfigError, Settings, load_settings
from dicomnode.net import REJECT_CALLING_AE
from dicomnode.node import Node
from tests.integration.test_receive_access import (
    _associate,
    _client_tls,
    _echo,
    _rejection,
    _self_signed,
    _settings,
)


@pytest.fixture
def mapped_node(tmp_path: Path, node_factory: Callable[[Settings], Node]) -> tuple[Node, dict[str, Path]]:
    """A TLS node trusting two client certificates (CN=modality, CN=workstation) whose mapping
    lets CN=modality call as CT1 or CT1B and lists no AE for CN=workstation."""
    server_cert, server_key = _self_signed(tmp_path, "server", "localhost")
    client_cert, client_key = _self_signed(tmp_path, "client", "modality")
    other_cert, other_key = _self_signed(tmp_path, "other", "workstation")
    bundle = tmp_path / "clients.pem"
    bundle.write_text(client_cert.read_text() + other_cert.read_text())
    node = node_factory(
        _settings(
            tmp_path,
            tls_cert=server_cert,
            tls_key=server_key,
            tls_ca=bundle,
            tls_client_aes=("modality:CT1", "modality:CT1B", "elsewhere:WS1"),
            acse_timeout_seconds=5,
        )
    )
    files = dict(
        server=server_cert, client=client_cert, client_key=client_key, other=other_cert, other_key=other_key
    )
    return node, files


def test_certificate_associates_as_the_calling_aes_mapped_to_its_cn(
    mapped_node: tuple[Node, dict[str, Path]],
) -> None:
    node, files = mapped_node
    assert _echo(node.port, calling="CT1", tls=_client_tls(files, "client"))
    assert _echo(node.port, calling="CT1B", tls=_client_tls(files, "client"))


def test_certificate_calling_as_another_ae_is_rejected_and_its_cn_logged(
    mapped_node: tuple[Node, dict[str, Path]], logs: list[dict[str, Any]]
) -> None:
    node, files = mapped_node
    assoc = _associate(node.port, calling="PACS", tls=_client_tls(files, "client"))
    assert _rejection(assoc) == REJECT_CALLING_AE
    [line] = [e for e in logs if e["event"] == "association.rejected"]
    assert line["certificate_cn"] == ["modality"]
    assert line["calling_ae"] == "PACS" and line["allowed_calling_aes"] == ["CT1", "CT1B"]
    assert _echo(node.port, calling="CT1", tls=_client_tls(files, "client"))


def test_trusted_certificate_without_a_mapping_is_rejected_for_every_ae(
    mapped_node: tuple[Node, dict[str, Path]], logs: list[dict[str, Any]]
) -> None:
    node, files = mapped_node
    for calling in ("CT1", "WS1"):
        assoc = _associate(node.port, calling=calling, tls=_client_tls(files, "other"))
        assert _rejection(assoc) == REJECT_CALLING_AE, (calling, assoc.is_established, assoc.is_aborted)
    lines = [e for e in logs if e["event"] == "association.rejected"]
    assert [e.get("certificate_cn") for e in lines] == [["workstation"], ["workstation"]], lines


def test_without_the_mapping_any_trusted_certificate_may_use_any_ae(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    server_cert, server_key = _self_signed(tmp_path, "server", "localhost")
    client_cert, client_key = _self_signed(tmp_path, "client", "modality")
    node = node_factory(_settings(tmp_path, tls_cert=server_cert, tls_key=server_key, tls_ca=client_cert))
    files = dict(server=server_cert, client=client_cert, client_key=client_key)
    assert _echo(node.port, calling="ANYTHING", tls=_client_tls(files, "client"))


# --------------------------------------------------------------------------------------------
# the setting


def test_client_aes_setting_parses_cn_and_ae_at_the_last_colon(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "server", "localhost")
    env = {
        "DICOMNODE_TLS_CERT": str(cert),
        "DICOMNODE_TLS_KEY": str(key),
        "DICOMNODE_TLS_CA": str(cert),
        "DICOMNODE_TLS_CLIENT_AES": " ct1.example.org:CT1 , urn:x:modality:CT2,",
    }
    s = load_settings(env=env)
    assert s.tls_client_aes == ("ct1.example.org:CT1", "urn:x:modality:CT2")
    assert load_settings(env=s.to_env()).tls_client_aes == s.tls_client_aes


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ct1.example.org", "<certificate subject CN>:<calling AE title>"),
        (":CT1", "<certificate subject CN>:<calling AE title>"),
        ("ct1:AN_AE_TITLE_TOO_LONG", "<certificate subject CN>:<calling AE title>"),
    ],
)
def test_client_aes_setting_names_a_bad_entry(tmp_path: Path, value: str, message: str) -> None:
    cert, key = _self_signed(tmp_path, "server", "localhost")
    env = {
        "DICOMNODE_TLS_CERT": str(cert),
        "DICOMNODE_TLS_KEY": str(key),
        "DICOMNODE_TLS_CA": str(cert),
        "DICOMNODE_TLS_CLIENT_AES": value,
    }
    with pytest.raises(ConfigError, match="DICOMNODE_TLS_CLIENT_AES") as err:
        load_settings(env=env)
    assert message in str(err.value)


def test_client_aes_setting_needs_a_ca(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "server", "localhost")
    env = {
        "DICOMNODE_TLS_CERT": str(cert),
        "DICOMNODE_TLS_KEY": str(key),
        "DICOMNODE_TLS_CLIENT_AES": "ct1:CT1",
    }
    with pytest.raises(ConfigError, match="needs DICOMNODE_TLS_CA"):
        load_settings(env=env)
