"""Receiving settings: access list, TLS files, limits, timeouts, duplicate policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import ConfigError, load_settings


def test_receiving_defaults_accept_anyone_without_tls() -> None:
    s = load_settings(env={})
    assert s.allowed_calling_aes == () and s.tls_cert is None and s.tls_ca is None
    assert (s.max_associations, s.duplicate_policy, s.fsync) == (10, "overwrite", True)
    assert s.max_pdu_bytes > 0 and s.shutdown_grace_seconds > 0


def test_allowed_calling_aes_keep_case_and_drop_blanks() -> None:
    s = load_settings(env={"DICOMNODE_ALLOWED_CALLING_AES": " CT01, us-room2 ,, MR_3 "})
    assert s.allowed_calling_aes == ("CT01", "us-room2", "MR_3")


def test_receiving_settings_from_toml(tmp_path: Path) -> None:
    f = tmp_path / "node.toml"
    f.write_text(
        "[dicomnode]\nallowed_calling_aes = ['CT01']\nmax_associations = 3\nduplicate_policy = 'IGNORE'\n"
        "fsync = false\nnetwork_timeout_seconds = 5\n"
    )
    s = load_settings(f, env={})
    assert (s.allowed_calling_aes, s.max_associations, s.duplicate_policy, s.fsync) == (
        ("CT01",),
        3,
        "ignore",
        False,
    )
    assert s.network_timeout_seconds == 5.0


def test_tls_files_are_checked(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    s = load_settings(env={"DICOMNODE_TLS_CERT": str(cert), "DICOMNODE_TLS_KEY": str(key)})
    assert s.tls_cert == cert and s.tls_key == key


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"DICOMNODE_ALLOWED_CALLING_AES": "OK," + "A" * 17}, "DICOMNODE_ALLOWED_CALLING_AES"),
        ({"DICOMNODE_TLS_CERT": "/nonexistent/cert.pem"}, "DICOMNODE_TLS_KEY go together"),
        ({"DICOMNODE_TLS_CA": "/nonexistent/ca.pem"}, "DICOMNODE_TLS_CA needs"),
        ({"DICOMNODE_TLS_CERT": "/no/c.pem", "DICOMNODE_TLS_KEY": "/no/k.pem"}, "no such file"),
        ({"DICOMNODE_MAX_ASSOCIATIONS": "0"}, "DICOMNODE_MAX_ASSOCIATIONS"),
        ({"DICOMNODE_NETWORK_TIMEOUT_SECONDS": "0"}, "DICOMNODE_NETWORK_TIMEOUT_SECONDS"),
        ({"DICOMNODE_ACSE_TIMEOUT_SECONDS": "soon"}, "DICOMNODE_ACSE_TIMEOUT_SECONDS"),
        ({"DICOMNODE_MAX_PDU_BYTES": "100"}, "DICOMNODE_MAX_PDU_BYTES"),
        ({"DICOMNODE_DUPLICATE_POLICY": "reject"}, "DICOMNODE_DUPLICATE_POLICY"),
        ({"DICOMNODE_FSYNC": "maybe"}, "DICOMNODE_FSYNC"),
        ({"DICOMNODE_SHUTDOWN_GRACE_SECONDS": "-1"}, "DICOMNODE_SHUTDOWN_GRACE_SECONDS"),
    ],
)
def test_bad_receiving_setting_fails_naming_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(env=env)
