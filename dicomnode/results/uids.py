"""Deterministic UIDs for the results of one study and one model version, and the Series
Description that names the version.

Re-running the same model on the same images yields the same series and instance UIDs, so a
re-send is idempotent (a PACS keeps one copy). Different content never reuses a UID (PS3.3 C.12.1:
a SOP Instance UID names one content): a new model version or a changed set of analysed images (a
late instance re-opened the study) hashes to new UIDs, so the result is a new revision that stands
beside the old one, whose SR points back to the earlier SR (:mod:`dicomnode.delivery.revisions`).
The version in the Series Description tells the series apart in a viewer (:func:`series_description`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.uid import RE_VALID_UID, generate_uid

__all__ = ["ResultUIDs", "content_key", "derived_uid", "is_uid", "result_uids", "series_description"]

#: Series Description is LO: at most 64 characters (PS3.5 6.2).
_LO_MAX = 64

#: Namespaces every hash, so our UIDs cannot collide with another tool hashing the same inputs.
_NAMESPACE = "dicomnode.results/v1"


@dataclass(frozen=True)
class ResultUIDs:
    """Series and instance UIDs of the SR and the heatmap SC of one study."""

    sr_series: str
    sr_instance: str
    sc_series: str
    sc_instance: str

    def __post_init__(self) -> None:
        for name in ("sr_series", "sr_instance", "sc_series", "sc_instance"):
            value = getattr(self, name)
            if not is_uid(value):
                raise ValueError(f"ResultUIDs.{name} is not a valid DICOM UID: {value!r}")
        if len({self.sr_series, self.sr_instance, self.sc_series, self.sc_instance}) != 4:
            raise ValueError("ResultUIDs must hold four different UIDs")


def is_uid(value: object) -> bool:
    """Whether ``value`` is a syntactically valid DICOM UID (PS3.5 9.1), without warnings."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(RE_VALID_UID.match(value))


def derived_uid(*parts: str) -> str:
    """A UID hashed from ``parts`` (same parts, same UID); pydicom's root with SHA-512."""
    return str(generate_uid(entropy_srcs=[_NAMESPACE, *parts]))


def content_key(analysed: Iterable[str]) -> str:
    """A short hash of the SOP Instance UIDs the model scored, in any order: the revision's name."""
    uids = sorted(set(analysed))
    if not uids:
        raise ValueError("no analysed instances: pass the SOP Instance UIDs the model scored")
    return hashlib.sha256("\\".join(uids).encode()).hexdigest()[:32]


def result_uids(study_uid: str, model_version: str, analysed: Iterable[str] | None = None) -> ResultUIDs:
    """The result UIDs of ``study_uid`` scored by ``model_version`` on the ``analysed`` SOP
    Instance UIDs; the same on every call with the same arguments. Without ``analysed`` (the
    builders' default, and results made before revisions) they depend on study and version only."""
    if not is_uid(study_uid):
        raise ValueError(f"study_uid is not a valid DICOM UID: {study_uid!r}")
    if not model_version:
        raise ValueError("model_version is empty: pass ModelCard.version")
    parts = (
        (study_uid, model_version) if analysed is None else (study_uid, model_version, content_key(analysed))
    )
    return ResultUIDs(
        sr_series=derived_uid(*parts, "sr-series"),
        sr_instance=derived_uid(*parts, "sr-instance"),
        sc_series=derived_uid(*parts, "sc-series"),
        sc_instance=derived_uid(*parts, "sc-instance"),
    )


def series_description(templates: tuple[str, ...], version: str) -> str:
    """The first of ``templates`` (each with a ``{version}`` field) that fits a Series Description
    (64 characters) with ``version`` in it; the version alone, cut to 64, when none does. Put the
    fullest wording first and shorter ones after, so a long version loses words, never itself."""
    for template in templates:
        text = template.format(version=version)
        if len(text) <= _LO_MAX:
            return text
    return version[:_LO_MAX]
