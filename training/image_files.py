"""PNG and JPEG radiographs to the model's input tensor, through the node's own preprocessing.

A published image set (Kermany, NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG) is a folder of 8- or
16-bit greyscale PNG/JPEG files. Their pixels are what a DICOM viewer would show, with no header
window: :func:`preprocess_image` hands them to :func:`dicomnode.model.preprocess_array` with no
window, which is exactly what :func:`dicomnode.model.preprocess` does from the VOI step on for a
MONOCHROME2 DICOM without a VOI LUT or window (the percentile window, then square, resize,
normalise). A model trained on the JPEGs therefore sees the DICOM the PACS sends the same way;
``tests/unit/test_training_images.py`` checks it tensor for tensor.

Pillow reads the files (a dependency of highdicom, so of the node; listed in the ``train`` extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dicomnode.model import PreprocessConfig
from dicomnode.model.preprocess import preprocess_array

#: file name endings read as images (case-insensitive); anything else is read as DICOM
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: largest per-pixel difference between the R, G and B planes of an image still taken as grey
#: (a JPEG of a grey image replicated in 3 channels decodes with +-1 rounding between planes)
GREY_TOLERANCE = 2


def is_image_file(path: Path) -> bool:
    """True for a PNG or JPEG file name (by its ending)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: Path) -> np.ndarray:
    """The grey pixel values of a PNG/JPEG: 2-D uint8 (8-bit) or uint16/int32 (16-bit).

    Colour files whose three planes are the same grey (Kermany's copies) are read as one plane;
    a real colour image raises ValueError, as a colour DICOM does.
    """
    from PIL import Image

    path = Path(path)
    with Image.open(path) as im:
        mode = im.mode
        if mode in ("L", "I;16", "I;16B", "I;16L", "I"):
            pixels = np.asarray(im)
        elif mode in ("RGB", "RGBA", "P", "LA"):
            rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
            spread = int(np.max(rgb.max(axis=2) - rgb.min(axis=2))) if rgb.size else 0
            if spread > GREY_TOLERANCE:
                raise ValueError(
                    f"{path} is a colour image (RGB planes differ by up to {spread}): the model takes "
                    "greyscale radiographs; convert it to 8- or 16-bit grey first"
                )
            pixels = np.asarray(im.convert("L"))
        else:
            raise ValueError(
                f"{path} has Pillow mode {mode!r}: expected 8-bit (L) or 16-bit (I;16) grey, or grey RGB"
            )
    if pixels.ndim != 2:
        raise ValueError(f"{path} decoded to shape {pixels.shape}: expected a 2-D grey image")
    return pixels


def preprocess_image(path: Path, config: PreprocessConfig) -> np.ndarray:
    """Preprocess a PNG/JPEG radiograph for the model: float32 ``[1, size, size]``, as
    :func:`dicomnode.model.preprocess` does for a MONOCHROME2 DICOM of the same pixels without VOI."""
    return preprocess_array(read_image(path), config)


__all__ = ["GREY_TOLERANCE", "IMAGE_SUFFIXES", "is_image_file", "preprocess_image", "read_image"]
