"""dicomnode: a DICOM-native AI triage node for chest radiographs."""

__version__ = "0.1.0"
