"""Where a stored instance lives: ``<instances>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

The UIDs become path components, so each is checked strictly first: a UID that is not digits and
dots could climb out of the storage folder. :func:`normalise_uid` is the node's one UID rule: the
header parse (:mod:`dicomnode.receive.header`) applies it too, so the folder, the SQL row and the
results name a study by the same UID.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")  # whole value (fullmatch): "$" would let a final newline through


class UnsafeUIDError(ValueError):
    """A UID that is not a valid DICOM UID would be unsafe as a path component."""


def normalise_uid(uid: str, what: str = "UID") -> str:
    """``uid`` without its trailing padding, or :class:`UnsafeUIDError` when it is not a valid UID.

    The padding removed is what every DICOM reader removes (PS3.5 9.1: a NUL pads a UI value to an
    even length; pydicom's ``convert_UI`` and our command set parse also drop trailing spaces, which
    careless writers use instead). What is left must be digits and dots, at most 64 characters
    (PS3.5 9.1); anything else, a newline or a space inside or in front included, is refused, so no
    two readers of the same file can disagree about the UID."""
    uid = uid.rstrip("\x00 ")
    if not uid or len(uid) > 64 or not _UID_RE.fullmatch(uid):
        raise UnsafeUIDError(f"{what} {uid[:70]!r} is not a valid DICOM UID (digits and dots, at most 64)")
    return uid


def instance_path(root: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """The final path of an instance; raises :class:`UnsafeUIDError` for malformed UIDs."""
    return (
        root
        / normalise_uid(study_uid, "StudyInstanceUID")
        / normalise_uid(series_uid, "SeriesInstanceUID")
        / (normalise_uid(sop_uid, "SOPInstanceUID") + ".dcm")
    )


def stored_files(root: Path) -> Iterator[Path]:
    """Every stored instance file under ``root`` (``<study>/<series>/<sop>.dcm``), temp files excluded."""
    if not root.is_dir():
        return
    for study in os.scandir(root):
        if not study.is_dir(follow_symlinks=False):
            continue
        for series in os.scandir(study.path):
            if not series.is_dir(follow_symlinks=False):
                continue
            for f in os.scandir(series.path):
                if (
                    f.name.endswith(".dcm")
                    and not f.name.startswith(".")
                    and f.is_file(follow_symlinks=False)
                ):
                    yield Path(f.path)


__all__ = ["UnsafeUIDError", "instance_path", "normalise_uid", "stored_files"]
