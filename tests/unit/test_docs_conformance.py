"""docs/conformance.md against the code it describes: the SOP classes the SCP stores and analyses,
the transfer syntaxes it can decode, the statuses it returns, the objects it sends, its
implementation identifiers and the association rejections."""

from __future__ import annotations

import re
from pathlib import Path

from pydicom.pixels import get_decoder
from pydicom.uid import UID

from dicomnode.model.selection import PROJECTION_SOP_CLASSES
from dicomnode.net import association, status
from dicomnode.net.contexts import STORAGE_SOP_CLASSES
from dicomnode.storage import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"


def section(heading: str) -> str:
    """The text under ``heading`` (a markdown heading line's text) up to the next heading."""
    text = DOC.read_text()
    m = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"docs/conformance.md has no heading {heading!r}"
    return m.group(1)


def uids_in(text: str) -> set[str]:
    return set(re.findall(r"`(1\.2\.840\.10008\.[0-9.]+)`", text))


def test_stored_sop_classes_are_the_classes_the_handler_stores() -> None:
    listed = uids_in(section("4.1 Storage SOP classes accepted as SCP").split("<details>", 1)[1])
    assert listed == set(STORAGE_SOP_CLASSES)


def test_analysed_sop_classes_are_the_models_classes() -> None:
    text = section("4.1 Storage SOP classes accepted as SCP")
    analysed = text.split("Analysed:", 1)[1].split("Stored (the full list", 1)[0]
    assert uids_in(analysed) == set(PROJECTION_SOP_CLASSES)


def test_every_decodable_transfer_syntax_listed_has_a_decoder() -> None:
    listed = uids_in(section("4.2 Transfer syntaxes").split("Verification:", 1)[0])
    assert len(listed) >= 10
    for uid in sorted(listed):
        assert get_decoder(UID(uid)).is_available, f"{uid} ({UID(uid).name}) cannot be decoded here"


def test_every_status_the_listener_returns_is_documented() -> None:
    text = DOC.read_text()
    for code, meaning in status.MEANINGS.items():
        assert f"`0x{code:04X}`" in text, f"docs/conformance.md does not explain 0x{code:04X} ({meaning})"


def test_objects_sent_are_the_result_classes() -> None:
    from pydicom.uid import (
        Comprehensive3DSRStorage,
        EnhancedSRStorage,
        KeyObjectSelectionDocumentStorage,
        SecondaryCaptureImageStorage,
    )

    from dicomnode.delivery.retract import build_rejection_note

    sent = uids_in(section("5. SOP classes sent as SCU"))
    assert sent == {
        str(Comprehensive3DSRStorage),
        str(EnhancedSRStorage),
        str(SecondaryCaptureImageStorage),
        str(KeyObjectSelectionDocumentStorage),  # the rejection note of `dicomnode retract`
    }
    assert callable(build_rejection_note)


def test_implementation_identifiers_match() -> None:
    head = DOC.read_text().split("## 1.", 1)[0]
    assert f"`{IMPLEMENTATION_CLASS_UID}`" in head
    assert f"`{IMPLEMENTATION_VERSION_NAME}`" in head


def test_association_rejections_match_the_listener() -> None:
    text = section("3. Association policies (node as SCP)")
    for verdict in (association.REJECT_CALLED_AE, association.REJECT_CALLING_AE, association.REJECT_TOO_MANY):
        assert "(" + ", ".join(str(v) for v in verdict) + ")" in text, verdict
