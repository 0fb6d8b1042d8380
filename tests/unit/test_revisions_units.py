"""Fast checks of issue 14.5-7's pieces: revision UIDs, TLS destination options, retention settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import ConfigError, Destination, load_settings, parse_destinations
from dicomnode.delivery.tls import client_tls_args
from dicomnode.results.uids import content_key, result_uids

STUDY = "1.2.826.0.1.3680043.10.1439.9"


def test_result_uids_name_the_analysed_instances_in_any_order() -> None:
    a = result_uids(STUDY, "1.0", ["1.2.3", "1.2.4"])
    assert a == result_uids(STUDY, "1.0", ["1.2.4", "1.2.3", "1.2.3"])  # a re-run: the same UIDs
    late = result_uids(STUDY, "1.0", ["1.2.3", "1.2.4", "1.2.5"])  # a late instance: new UIDs
    other_model = result_uids(STUDY, "1.1", ["1.2.3", "1.2.4"])
    for b in (late, other_model, result_uids(STUDY, "1.0")):
        assert not {a.sr_series, a.sr_instance, a.sc_series, a.sc_instance} & {
            b.sr_series,
            b.sr_instance,
            b.sc_series,
            b.sc_instance,
        }
    with pytest.raises(ValueError, match="no analysed instances"):
        content_key([])


def test_destination_tls_options_parse_and_round_trip(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "me.pem", "me.key"))
    for p in (ca, cert, key):
        p.write_text("pem")
    plain, tls_only, full = parse_destinations(
        f"PACS@10.0.0.5:104, SEC@pacs:2762?tls, CA@h:2762?ca={ca}&cert={cert}&key={key}&name=pacs.example.org"
    )
    assert (
        plain == Destination("PACS", "10.0.0.5", 104)
        and not plain.tls
        and plain.spec() == "PACS@10.0.0.5:104"
    )
    assert tls_only.tls and tls_only.tls_ca is None and tls_only.spec() == "SEC@pacs:2762?tls"
    assert (full.tls_ca, full.tls_cert, full.tls_key, full.tls_server_name) == (
        ca,
        cert,
        key,
        "pacs.example.org",
    )
    assert str(full) == "CA@h:2762"  # the name in logs and SQL carries no option
    assert parse_destinations(",".join(d.spec() for d in (plain, tls_only, full))) == (plain, tls_only, full)
    assert client_tls_args(plain) is None
    assert client_tls_args(tls_only) is not None and client_tls_args(tls_only)[1] == "pacs"  # type: ignore[index]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("ca=/nonexistent/ca.pem", "no such file"),
        ("verify=no", "unknown TLS option 'verify=no'"),
        ("cert=CERT", "cert= and key= go together"),
    ],
)
def test_bad_tls_options_say_what_to_write(tmp_path: Path, query: str, message: str) -> None:
    cert = tmp_path / "me.pem"
    cert.write_text("pem")
    with pytest.raises(ConfigError, match=message):
        parse_destinations(f"PACS@h:104?{query.replace('CERT', str(cert))}")


def test_retention_settings_default_off_and_refuse_negatives() -> None:
    s = load_settings(env={})
    assert (s.retention_instance_days, s.retention_result_days) == (0.0, 0.0)
    with pytest.raises(ConfigError, match="DICOMNODE_RETENTION_INSTANCE_DAYS=-1.0"):
        load_settings(env={"DICOMNODE_RETENTION_INSTANCE_DAYS": "-1"})
