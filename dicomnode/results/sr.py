"""The pneumonia triage result as a DICOM Structured Report (IHE AI Results profile).

Content tree (PS3.16 TID 1500 "Measurement Report", root DCM 126000)::

    Imaging Measurement Report
      Language, Observer Context (TID 1002): device observer = the model
        (Device Observer UID = ModelCard.device_uid, name, manufacturer, model name + version)
      Procedure Reported: LOINC chest radiograph (codes.procedure_reported)
      Image Library (TID 1600): one entry per source image
      Imaging Measurements
        Measurement Group (TID 1501)
          Tracking Identifier + Tracking UID (deterministic)
          Finding: Pneumonia (SCT 233604007)
          Finding Site: Lung
          Algorithm Name / Version / Parameters (TID 4019, family DCM 123110)
          Source images
          Probability (DCM 122157) = p, UCUM "1"
          Pneumonia = Present | Absent          (qualitative evaluation)
          Priority  = Urgent  | Routine         (qualitative evaluation, codes.PRIORITY)

The SOP Common Contributing Equipment Sequence names the model (manufacturer, model name,
software version, Device UID), as IHE AIR asks.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.model.card import ModelCard
from dicomnode.results import codes
from dicomnode.results.equipment import check_inputs, model_equipment
from dicomnode.results.evidence import evidence_header, library_ready, same_study
from dicomnode.results.finding import Finding, Priority
from dicomnode.results.uids import ResultUIDs, derived_uid, result_uids, series_description

__all__ = [
    "SR_SERIES_DESCRIPTION",
    "SR_SERIES_DESCRIPTIONS",
    "SR_SERIES_NUMBER",
    "TRACKING_IDENTIFIER",
    "build_sr",
    "sr_from_headers",
    "tracking_uid",
]

#: Series Number of our SR series; 99xx keeps AI results after the acquired series in viewers.
SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "AI pneumonia triage (not for diagnostic use)"
#: The SR's Series Description with the model version, fullest first (:func:`series_description`)
SR_SERIES_DESCRIPTIONS = (
    "AI pneumonia triage {version} (not for diagnostic use)",
    "AI triage {version} (not for diagnostic use)",
    "AI triage {version} not for diagnosis",
)
#: Human-readable Tracking Identifier of the measurement group.
TRACKING_IDENTIFIER = "AI pneumonia triage"


def tracking_uid(uids: ResultUIDs) -> str:
    """Tracking UID of the finding group: fixed per study and model version, like the SR."""
    return derived_uid(uids.sr_instance, "tracking")


def build_sr(
    sources: Sequence[Dataset],
    finding: Finding,
    card: ModelCard,
    *,
    uids: ResultUIDs | None = None,
    enhanced: bool = False,
    minimal: bool = False,
    predecessors: Sequence[Dataset] = (),
) -> Dataset:
    """Build the Comprehensive 3D SR (or Enhanced SR) reporting ``finding`` on ``sources``.

    Parameters
    ----------
    sources:
        The images the model scored, all from one study. They are cited as evidence and listed in
        the image library; they are not modified: the SR copies patient, study and equipment
        attributes from header copies made valid (:mod:`dicomnode.results.sanitise`: an invalid
        value is corrected when that is unambiguous, else left out).
    finding:
        The model's probability and the card's threshold; its ``threshold`` must equal
        ``card.threshold``.
    card:
        The model's card: names the algorithm, device observer and contributing equipment.
    uids:
        Series and instance UIDs; default :func:`~dicomnode.results.uids.result_uids` of the study
        and ``card.version``.
    enhanced:
        Build an Enhanced SR (1.2.840.10008.5.1.4.1.1.88.22) instead of Comprehensive 3D SR
        (…88.34) for destinations that refuse 3D SR; the content is the same.
    minimal:
        Copy from the sources only what files the SR with the patient and study (PatientID,
        PatientName, AccessionNumber, StudyID; :data:`dicomnode.results.sanitise.MINIMAL_KEYWORDS`),
        leaving the other patient and study attributes empty: the same finding, for when the full
        header cannot be written.
    predecessors:
        Earlier SRs of this study that this one revises (each needs its Study, Series, SOP Class
        and SOP Instance UIDs): listed in the Predecessor Documents Sequence
        (:mod:`dicomnode.delivery.revisions`).

    Returns
    -------
    pydicom.Dataset
        A highdicom SR dataset, Explicit VR Little Endian, in the sources' study, series
        :data:`SR_SERIES_NUMBER`.

    Raises
    ------
    ValueError
        No sources, sources from several studies, a source that is not an image, a threshold that
        disagrees with the card, or a card whose device UID is not a UID.
    """
    sources = list(sources)
    study_uid = same_study(sources, "build_sr")
    check_inputs(finding, card)
    if uids is None:
        uids = result_uids(study_uid, card.version)
    headers = [evidence_header(ds, minimal=minimal) for ds in sources]
    return sr_from_headers(headers, finding, card, uids=uids, enhanced=enhanced, predecessors=predecessors)


def sr_from_headers(
    headers: Sequence[Dataset],
    finding: Finding,
    card: ModelCard,
    *,
    uids: ResultUIDs,
    enhanced: bool = False,
    predecessors: Sequence[Dataset] = (),
) -> Dataset:
    """:func:`build_sr` on the sources' :func:`~dicomnode.results.evidence.evidence_header` copies,
    already made and checked (one study, inputs checked); the SR is a function of these alone."""
    library = [h for h in headers if library_ready(h)]

    observer = hd.sr.ObserverContext(
        observer_type=dcm_codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=card.device_uid,
            name=card.name,
            manufacturer_name=card.manufacturer,
            model_name=f"{card.name} {card.version}",
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid(uids), identifier=TRACKING_IDENTIFIER),
        finding_type=codes.PNEUMONIA,
        algorithm_id=_algorithm(card),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.FINDING_SITE)],
        measurements=[
            hd.sr.Measurement(
                name=codes.PROBABILITY,
                value=finding.probability,
                unit=codes.PROBABILITY_UNIT,
                algorithm_id=_algorithm(card),
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=codes.PNEUMONIA,
                value=codes.FINDING_PRESENT if finding.present else codes.FINDING_ABSENT,
            ),
            hd.sr.QualitativeEvaluation(
                name=codes.PRIORITY,
                value=(
                    codes.PRIORITY_URGENT if finding.priority is Priority.URGENT else codes.PRIORITY_ROUTINE
                ),
            ),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in headers],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.procedure_reported(len(headers)),
        imaging_measurements=[group],
        referenced_images=library or None,
    )

    sop_class = hd.sr.EnhancedSR if enhanced else hd.sr.Comprehensive3DSR
    sr = sop_class(
        evidence=headers,
        content=report,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=card.manufacturer,
        manufacturer_model_name=card.name,
        software_versions=card.version,
        series_description=series_description(SR_SERIES_DESCRIPTIONS, card.version),
        is_complete=True,
        # an unverified machine result: PRELIMINARY until a radiologist signs a report
        is_final=False,
        contributing_equipment=[model_equipment(card)],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        previous_versions=list(predecessors) or None,
    )
    return sr


def _algorithm(card: ModelCard) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification of the model (a fresh one for each place it is cited)."""
    return hd.sr.AlgorithmIdentification(
        name=card.name,
        version=card.version,
        parameters=[f"threshold={card.threshold:g}"],
        family=codes.ALGORITHM_FAMILY,
        manufacturer=card.manufacturer,
    )
