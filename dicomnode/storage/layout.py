"""Where a stored instance lives: ``<instances>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

The UIDs become path components, so each is checked strictly first: a UID that is not digits and
dots could climb out of the storage folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class UnsafeUIDError(ValueError):
    """A UID that is not a valid DICOM UID would be unsafe as a path component."""


def _component(uid: str, what: str) -> str:
    uid = uid.strip().rstrip("\x00")
    if not uid or len(uid) > 64 or not _UID_RE.match(uid):
        raise UnsafeUIDError(f"{what} {uid[:70]!r} is not a valid DICOM UID (digits and dots, at most 64)")
    return uid


def instance_path(root: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """The final path of an instance; raises :class:`UnsafeUIDError` for malformed UIDs."""
    return (
        root
        / _component(study_uid, "StudyInstanceUID")
        / _component(series_uid, "SeriesInstanceUID")
        / (_component(sop_uid, "SOPInstanceUID") + ".dcm")
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


__all__ = ["UnsafeUIDError", "instance_path", "stored_files"]
