"""The heatmap as a Secondary Capture image (RGB), for viewers that show no SR.

Layout (rows top to bottom): a dark banner with "NOT FOR DIAGNOSTIC USE", the probability and
priority, and a colour legend 0..1 with the threshold ticked; then the radiograph, windowed as the
model saw it, with the class-activation map blended over it in a jet-like colormap. Radiographs
longer than :data:`~dicomnode.results.render.MAX_SIDE` pixels are shrunk, those narrower than
:data:`~dicomnode.results.render.MIN_WIDTH` enlarged, and PixelSpacing scaled to match. The banner carries no patient details, so BurnedInAnnotation is "NO"
(PS3.3 C.7.6.1.1.7).
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from dicomnode.model.card import ModelCard
from dicomnode.model.decode import Reader, cached_display
from dicomnode.model.preprocess import DisplayImage, PreprocessConfig
from dicomnode.results.equipment import check_inputs, model_equipment
from dicomnode.results.evidence import chest_orientation, evidence_header
from dicomnode.results.finding import Finding
from dicomnode.results.part10 import encode
from dicomnode.results.render import display_image, render_heatmap
from dicomnode.results.sanitise import full_or_minimal
from dicomnode.results.uids import ResultUIDs, result_uids, series_description

__all__ = [
    "BANNER",
    "HeatmapFile",
    "SC_SERIES_DESCRIPTION",
    "SC_SERIES_DESCRIPTIONS",
    "SC_SERIES_NUMBER",
    "banner_lines",
    "build_heatmap_sc",
    "heatmap_sc_file",
    "warm_up",
]

#: First banner line, burned into every heatmap.
BANNER = "NOT FOR DIAGNOSTIC USE"
SC_SERIES_NUMBER = 9902
SC_SERIES_DESCRIPTION = "AI pneumonia heatmap - NOT FOR DIAGNOSTIC USE"
#: The SC's Series Description with the model version, fullest first (:func:`series_description`)
SC_SERIES_DESCRIPTIONS = (
    "AI pneumonia heatmap {version} - NOT FOR DIAGNOSTIC USE",
    "AI heatmap {version} - NOT FOR DIAGNOSTIC USE",
    "AI heatmap {version} NOT FOR DIAGNOSIS",
)


def banner_lines(finding: Finding) -> list[str]:
    """The text burned into the banner: the warning, then probability and priority."""
    return [BANNER, f"AI PNEUMONIA P={finding.probability:.2f} {finding.priority.value.upper()}"]


def build_heatmap_sc(
    source: Dataset,
    cam: np.ndarray,
    finding: Finding,
    card: ModelCard,
    *,
    uids: ResultUIDs | None = None,
    minimal: bool = False,
    display: DisplayImage | None = None,
) -> Dataset:
    """Build the RGB Secondary Capture of ``cam`` over ``source`` in the source's study.

    Parameters
    ----------
    source:
        The radiograph the CAM belongs to (single-frame MONOCHROME1/2); not modified. Patient,
        study and equipment attributes come from a header copy made valid
        (:mod:`dicomnode.results.sanitise`).
    cam:
        The model's class-activation map for ``source``, float [h, w] in [0, 1] over the model's
        input square (``dicomnode.model.card.CAM_OUTPUT``); values outside [0, 1] are clipped.
    finding, card:
        The study's finding and the model's card (threshold, name, version, preprocessing).
    uids:
        Default :func:`~dicomnode.results.uids.result_uids` of the study and ``card.version``.
        One heatmap per study: ``uids.sc_instance`` names it.
    minimal:
        Copy only what files the image with the patient and study, as
        :func:`~dicomnode.results.sr.build_sr` does with ``minimal``.
    display:
        ``source``'s pixels as :func:`~dicomnode.model.preprocess.display_image_of` made them
        with :data:`~dicomnode.results.render.MAX_SIDE` where the image was decoded (the worker
        decodes in a memory-limited process); None decodes ``source`` here.

    Raises
    ------
    ValueError
        ``source`` is not a single-frame grayscale image, ``cam`` is not 2-D, the finding's
        threshold disagrees with the card, or the card's preprocessing is not one this code
        implements (``dicomnode.model.preprocess.PreprocessConfig.from_dict``).
    """
    check_inputs(finding, card)
    if not source.get("StudyInstanceUID"):
        raise ValueError("build_heatmap_sc: the source image has no StudyInstanceUID")
    if uids is None:
        uids = result_uids(str(source.StudyInstanceUID), card.version)

    rendered = render_heatmap(
        display if display is not None else display_image(source, card.preprocess),
        cam,
        keep_aspect=bool(card.preprocess.get("keep_aspect", True)),
        lines=banner_lines(finding),
        threshold=card.threshold,
    )
    spacing = _spacing(source)
    if spacing is not None:
        spacing = (spacing[0] * rendered.zoom[0], spacing[1] * rendered.zoom[1])

    # patient and study attributes come from a valid header copy with Type 2 gaps filled
    reference = evidence_header(source, minimal=minimal)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=rendered.pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.sc_series,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instance,
        instance_number=1,
        manufacturer=card.manufacturer,
        manufacturer_model_name=card.name,
        software_versions=card.version,
        series_description=series_description(SC_SERIES_DESCRIPTIONS, card.version),
        pixel_spacing=spacing,  # type: ignore[arg-type]  # highdicom annotates ints
        patient_orientation=chest_orientation(reference),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[model_equipment(card)],
    )
    _copy_laterality(reference, sc)
    sc.BurnedInAnnotation = "NO"
    sc.DerivationDescription = (
        f"Class activation map of {card.name} {card.version} blended over the source image; "
        f"banner rows 0-{rendered.banner_rows - 1}; not for diagnostic use"
    )
    sc.SourceImageSequence = [_source_reference(source)]
    return sc


@dataclass(frozen=True)
class HeatmapFile:
    """The heatmap SC as :func:`heatmap_sc_file` made it: its Part 10 bytes, and whether only the
    minimal header could be copied (``error``: the type of what the full header raised)."""

    data: bytes
    minimal: bool = False
    error: str | None = None


def heatmap_sc_file(
    reader: Reader,
    path: str,
    config: PreprocessConfig,
    max_pixels: int,
    max_side: int,
    source: Dataset,
    cam: np.ndarray,
    finding: Finding,
    card: ModelCard,
    uids: ResultUIDs,
) -> HeatmapFile:
    """:func:`build_heatmap_sc` over the display of the file at ``path``, encoded; with the
    minimal header when the full one is refused.

    The worker runs this where the file was decoded (:meth:`dicomnode.model.decode.Decoder.call`):
    the display is there already, and drawing and encoding the 1024-pixel RGB image there leaves
    the worker's process, which also receives and delivers, to its other work.
    """
    display = cached_display(reader, path, config, max_pixels, max_side)
    data, error = full_or_minimal(
        lambda minimal: encode(
            build_heatmap_sc(source, cam, finding, card, uids=uids, minimal=minimal, display=display)
        )
    )
    return HeatmapFile(data, minimal=error is not None, error=error)


def warm_up(card: ModelCard) -> None:
    """Build one small heatmap SC and drop it: highdicom's tables of the standard (about 100 MB
    once parsed) and the blend table are then loaded in this process. The decoding process runs
    this before its memory is capped (``Decoder(warm=...)``), so an image's budget
    (DICOMNODE_DECODE_MEMORY_BYTES) is the image's alone."""
    source = Dataset()
    source.SOPClassUID = DigitalXRayImageStorageForPresentation
    source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID = (
        generate_uid() for _ in range(3)
    )
    source.Modality = "DX"
    source.Rows = source.Columns = 8
    source.SamplesPerPixel = 1
    source.PhotometricInterpretation = "MONOCHROME2"
    display = DisplayImage(np.zeros((8, 8), np.uint8), (8, 8))
    build_heatmap_sc(source, np.zeros((2, 2)), Finding(card.threshold, card.threshold), card, display=display)


def _copy_laterality(source: Dataset, sc: Dataset) -> None:
    """Body part and General Series Laterality (Type 2C: needed for paired body parts).

    The source's Laterality is copied when it has one. Otherwise, with a body part named (the
    chest is unpaired), Laterality stays absent; with no body part, nobody can tell whether it is
    required, so it is present and empty ("unknown"), which dciodvfy accepts with a warning.
    """
    body_part = str(source.get("BodyPartExamined", "") or "")
    if body_part:
        sc.BodyPartExamined = body_part
    if "Laterality" in source:
        sc.Laterality = source.Laterality
    elif not body_part:
        sc.Laterality = ""


def _spacing(source: Dataset) -> tuple[float, float] | None:
    """Row and column spacing (mm) of the source: PixelSpacing, else ImagerPixelSpacing.

    ImagerPixelSpacing is measured at the detector, so it overstates anatomy by the geometric
    magnification (about 10 % for a PA chest); it is still what viewers measure with when a
    radiograph has no PixelSpacing.
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = source.get(keyword)
        if value is not None and not isinstance(value, str) and len(value) == 2:
            try:
                rows, cols = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if rows > 0 and cols > 0:
                return rows, cols
    return None


def _source_reference(source: Dataset) -> Dataset:
    """Source Image Sequence item (PS3.3 C.7.6.1) pointing at the radiograph."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = hd.sr.CodedConcept.from_code(dcm_codes.DCM.SourceImageForImageProcessingOperation)
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item
