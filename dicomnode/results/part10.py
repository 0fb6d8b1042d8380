"""Results as DICOM Part 10 files (what is written to disk and sent)."""

from __future__ import annotations

from io import BytesIO

import pydicom
from pydicom import Dataset

__all__ = ["encode"]


def encode(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file (preamble, file meta, data set)."""
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
