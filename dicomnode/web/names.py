"""Patient names for the web page, only when ``DICOMNODE_WEB_SHOW_PATIENT_NAMES`` is on.

SQL holds no patient details; the name is read from the header of the study's first stored
instance (the pixel data is not read) and kept in a small cache. A study whose instances were
purged by retention shows none. Names are never logged.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from dicomnode.store.db import Store
from dicomnode.store.queries import study_instances

#: Studies whose names are kept in memory.
CACHE_ENTRIES = 2048


class PatientNames:
    """Study UID -> the patient name in its stored images (``Family, Given``), cached."""

    def __init__(self, store: Store, entries: int = CACHE_ENTRIES) -> None:
        self.store = store
        self.entries = entries
        self._cache: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, study_uid: str) -> str | None:
        with self._lock:
            if study_uid in self._cache:
                self._cache.move_to_end(study_uid)
                return self._cache[study_uid]
        name = self._read(study_uid)
        with self._lock:
            self._cache[study_uid] = name
            while len(self._cache) > self.entries:
                self._cache.popitem(last=False)
        return name

    def _read(self, study_uid: str) -> str | None:
        import pydicom
        from pydicom.valuerep import PersonName

        for inst in study_instances(self.store, study_uid)[:1]:
            try:
                ds = pydicom.dcmread(
                    inst.path, stop_before_pixels=True, specific_tags=["PatientName"], force=True
                )
            except (OSError, ValueError):
                return None
            value = ds.get("PatientName")
            if not value:
                return None
            pn = value if isinstance(value, PersonName) else PersonName(str(value))
            return pn.family_comma_given() or str(pn)
        return None


__all__ = ["CACHE_ENTRIES", "PatientNames"]
