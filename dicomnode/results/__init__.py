"""Results of the pneumonia triage as DICOM: the SR, the heatmap SC, and the reading order.

Pure functions of typed inputs (a :class:`Finding`, a :class:`dicomnode.model.card.ModelCard`, source
datasets); nothing here reads config, touches the database or the network.

>>> finding = Finding(probability=0.87, threshold=0.5)
>>> finding.present, finding.priority.value
(True, 'urgent')
"""

from dicomnode.results.finding import Finding, Priority
from dicomnode.results.reader import SRSummary, read_sr
from dicomnode.results.reading_order import RankedEntry, RankReason, WorklistEntry, reading_order
from dicomnode.results.sanitise import changed_keywords, sanitised_copy
from dicomnode.results.sc import build_heatmap_sc
from dicomnode.results.sr import build_sr
from dicomnode.results.uids import ResultUIDs, result_uids

__all__ = [
    "Finding",
    "Priority",
    "RankReason",
    "RankedEntry",
    "ResultUIDs",
    "SRSummary",
    "WorklistEntry",
    "build_heatmap_sc",
    "build_sr",
    "changed_keywords",
    "read_sr",
    "reading_order",
    "result_uids",
    "sanitised_copy",
]
