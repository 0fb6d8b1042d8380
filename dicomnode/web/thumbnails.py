"""Heatmap thumbnails: the study's Secondary Capture result, shrunk to a small PNG.

The SC is the pipeline's own output (:mod:`dicomnode.results.sc`): the radiograph with the
class-activation map in colour under a banner that says "NOT FOR DIAGNOSTIC USE" with the
probability and priority, and no patient details (its BurnedInAnnotation is "NO"), so the
thumbnail shows nothing the worklist row does not. PNGs are cached by file, size and modification
time, up to :data:`CACHE_BYTES`.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

#: Longest side of a thumbnail, in pixels (the worklist row is this tall).
THUMBNAIL_SIDE = 96
#: Bytes of PNGs kept in memory (a worklist thumbnail is 10-20 KiB, a study page's 100-150 KiB).
CACHE_BYTES = 32 << 20


class Thumbnails:
    """PNG thumbnails of SC files, an LRU cache in front."""

    def __init__(self, side: int = THUMBNAIL_SIDE, cache_bytes: int = CACHE_BYTES) -> None:
        self.side = side
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def png(self, path: Path, side: int | None = None) -> bytes:
        """The thumbnail of the SC at ``path``; raises FileNotFoundError or ValueError (not an
        RGB or grey image)."""
        side = side or self.side
        key = (f"{path}@{side}", path.stat().st_mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = render_png(path, side)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = data
                self._held += len(data)
            while self._held > self.cache_bytes and self._cache:
                self._held -= len(self._cache.popitem(last=False)[1])
        return data


def render_png(path: Path, side: int) -> bytes:
    """The first frame of the DICOM image at ``path`` as a PNG whose longest side is ``side``."""
    import numpy as np
    import pydicom
    from PIL import Image

    ds = pydicom.dcmread(path)
    pixels = np.asarray(ds.pixel_array)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"{path.name}: not an 8-bit image (dtype {pixels.dtype}, shape {pixels.shape})")
    image = Image.fromarray(pixels)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


__all__ = ["CACHE_BYTES", "THUMBNAIL_SIDE", "Thumbnails", "render_png"]
