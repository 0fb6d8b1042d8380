"""Deterministic UIDs for the results of one study and one model version.

Re-running the same model on the same study yields the same series and instance UIDs, so the
destination replaces the earlier result instead of listing a duplicate; a new model version gets
new UIDs, so its results stand beside the old ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import RE_VALID_UID, generate_uid

__all__ = ["ResultUIDs", "derived_uid", "is_uid", "result_uids"]

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


def result_uids(study_uid: str, model_version: str) -> ResultUIDs:
    """The result UIDs of ``study_uid`` scored by ``model_version``; the same on every call."""
    if not is_uid(study_uid):
        raise ValueError(f"study_uid is not a valid DICOM UID: {study_uid!r}")
    if not model_version:
        raise ValueError("model_version is empty: pass ModelCard.version")
    return ResultUIDs(
        sr_series=derived_uid(study_uid, model_version, "sr-series"),
        sr_instance=derived_uid(study_uid, model_version, "sr-instance"),
        sc_series=derived_uid(study_uid, model_version, "sc-series"),
        sc_instance=derived_uid(study_uid, model_version, "sc-instance"),
    )
