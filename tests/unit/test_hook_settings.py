"""The urgent-finding hook's settings and what it records of a URL (no server: see
tests/integration/test_urgent_hook.py for the POSTs themselves)."""

from __future__ import annotations

import pytest

from dicomnode.config import ConfigError, load_settings
from dicomnode.delivery.hook import payload, target
from dicomnode.store.notifications import UrgentAnalysis


def test_hook_urls_keep_their_case_and_refuse_what_is_not_http() -> None:
    s = load_settings(
        env={"DICOMNODE_URGENT_HOOK_URLS": " https://RIS.example.org/Hook?k=1 , http://10.0.0.9:8080/x "}
    )
    assert s.urgent_hook_urls == ("https://RIS.example.org/Hook?k=1", "http://10.0.0.9:8080/x")
    for bad in ("ftp://ris/x", "ris.example.org/hook", "https://"):
        with pytest.raises(ConfigError, match="DICOMNODE_URGENT_HOOK_URLS entry"):
            load_settings(env={"DICOMNODE_URGENT_HOOK_URLS": bad})


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"DICOMNODE_URGENT_HOOK_AUTH_HEADER": "s3cret"}, "'Name: value'"),
        ({"DICOMNODE_URGENT_HOOK_TIMEOUT_SECONDS": "0"}, "URGENT_HOOK_TIMEOUT_SECONDS=0.0: must be > 0"),
        ({"DICOMNODE_URGENT_HOOK_WINDOW_SECONDS": "-1"}, "URGENT_HOOK_WINDOW_SECONDS=-1.0: must be > 0"),
    ],
)
def test_bad_hook_settings_are_refused_naming_the_setting(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(env=env)


def test_events_show_the_target_without_credentials_or_query() -> None:
    assert target("https://user:pw@ris.example.org:8443/hooks/urgent?token=abc") == (
        "https://ris.example.org:8443/hooks/urgent"
    )


def test_the_body_names_the_study_and_the_score_never_the_patient() -> None:
    finding = UrgentAnalysis(
        analysis_id=7,
        study_uid="1.2.3",
        accession_number="",
        score=0.91,
        threshold=0.5,
        priority="urgent",
        model_name="m",
        model_version="1.0",
        analysed_at=None,
        sr_sop_instance_uid="1.2.3.4",
        sc_sop_instance_uid="1.2.3.5",
    )
    body = payload(finding, "NODE")
    assert body["study_instance_uid"] == "1.2.3" and body["accession_number"] is None
    assert body["node_ae_title"] == "NODE" and body["score"] == 0.91
    assert not any("patient" in key for key in body)


def test_mllp_hook_needs_a_port() -> None:
    s = load_settings(env={"DICOMNODE_URGENT_HOOK_URLS": "mllp://ris.example.org:2575"})
    assert s.urgent_hook_urls == ("mllp://ris.example.org:2575",)
    with pytest.raises(ConfigError, match="mllp://host:port"):
        load_settings(env={"DICOMNODE_URGENT_HOOK_URLS": "mllp://ris.example.org"})


def test_oru_r01_escapes_delimiters_and_carries_no_pid_segment() -> None:
    from hl7apy.parser import parse_message

    from dicomnode.delivery.hl7v2 import oru_r01

    body = {
        "accession_number": "A|1^2",
        "score": 0.9,
        "priority": "urgent",
        "study_instance_uid": "1.2.3",
        "model_name": "m&n",
        "model_version": "1.0",
        "node_ae_title": "NODE",
        "sr_sop_instance_uid": "1.2.3.4",
    }
    er7 = oru_r01(body, control_id="DN7")
    segments = [line.split("|", 1)[0] for line in er7.strip("\r").split("\r")]
    assert segments == ["MSH", "OBR", "OBX", "OBX", "OBX", "OBX", "OBX"]
    order = parse_message(er7).oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_3.value == "A\\F\\1\\S\\2"  # escaped, so the RIS reads A|1^2 back
    assert order.oru_r01_observation[0].obx.obx_5.value == "0.9000"
