"""The SR built by highdicom once per header shape, then filled in per study.

highdicom builds a Comprehensive 3D SR in about 35 ms of CPU, most of it copying and walking its
own content tree; the SR of two studies whose source headers have the same attributes differs
only in values that highdicom copies verbatim (patient and study attributes, UIDs, dates), the
probability and the creation time. :class:`SRTemplates` builds a study's SR once with highdicom from
stand-in values (sentinels), finds where each sentinel landed in the encoded SR, and for the next
study of the same shape writes that study's values into those places in the bytes.

A template is used only once it has proven itself: the study whose shape made it is built by
highdicom as well, and the template filled with that study's values must give the same bytes, or
the shape is built by highdicom every time. A sentinel found anywhere but as a whole value (copied
into a longer text, say) also rules the shape out. What the shape holds, so that two studies
share a template only when highdicom would build both alike: the model card, the finding's
present/absent and priority, minimal or full header, the number of predecessors and sources, and
for each source header every attribute's tag and VR, every value highdicom might interpret (code
strings, multi-valued and binary values) and which of the copied values are equal to which
(highdicom groups evidence by equal series UIDs).
"""

from __future__ import annotations

import copy
import datetime
import re
import secrets
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pydicom
import structlog
from pydicom import DataElement, Dataset
from pydicom.charset import convert_encodings
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DS, DT, TM, DSfloat

from dicomnode.model.card import ModelCard
from dicomnode.results.equipment import check_inputs
from dicomnode.results.evidence import evidence_header, same_study
from dicomnode.results.finding import Finding
from dicomnode.results.part10 import encode
from dicomnode.results.sr import sr_from_headers, tracking_uid
from dicomnode.results.uids import ResultUIDs

__all__ = ["SRTemplates"]

log = structlog.get_logger("results.sr_template")

#: Text VRs whose values highdicom copies as they are: these become sentinels.
_TEXT_SLOTS = frozenset({"AE", "AS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UI"})
#: Numbers that become sentinels too (Rows, Columns...): highdicom does not copy them into the SR,
#: and the proof catches it if it ever does.
_NUMBER_SLOTS = {"US": "<H", "UL": "<I", "SS": "<h", "SL": "<i", "FL": "<f", "FD": "<d"}
#: Never sentinels: values highdicom reads to decide what to build. (Code strings are never
#: sentinels either: highdicom checks enumerated ones, PatientSex among them.)
_KEY_KEYWORDS = frozenset({"SOPClassUID", "Modality", "SpecificCharacterSet"})
#: Set by highdicom from the clock on every build: creation and content date and time (top level),
#: and the Contribution DateTime of the item naming highdicom (Contributing Equipment Sequence).
_CLOCK = {0x00080012: "date", 0x00080013: "time", 0x00080023: "date", 0x00080033: "time"}
_CONTRIBUTION_DATETIME = 0x0018A002
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


# --- where every element lies in Explicit VR Little Endian bytes ------------------------------


@dataclass(frozen=True)
class _Leaf:
    """One element that is not a sequence: its bytes ``start:end``, its value from ``value``, and
    the 4-byte length fields (sequence, item, meta group) whose value counts its bytes."""

    tag: int
    vr: str
    start: int
    value: int
    end: int
    lengths: tuple[int, ...]


def _leaves(buf: bytes) -> list[_Leaf]:
    """Every non-sequence element of a Part 10 file in Explicit VR Little Endian, in order."""
    if buf[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file")
    out: list[_Leaf] = []
    if struct.unpack_from("<HH", buf, 132) != (2, 0):
        raise ValueError("the file meta information has no group length")
    value_length = struct.unpack_from("<I", buf, 140)[0]
    meta_end = 144 + value_length
    out.append(_Leaf(0x00020000, "UL", 132, 140, 144, ()))
    _walk(buf, 144, meta_end, (140,), out)
    _walk(buf, meta_end, len(buf), (), out)
    return out


def _walk(buf: bytes, pos: int, end: int, lengths: tuple[int, ...], out: list[_Leaf]) -> int:
    while pos < end:
        group, element = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | element
        if tag in (_ITEM_END, _SEQUENCE_END):
            return pos + 8
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            field, start = pos + 8, pos + 12
            length = struct.unpack_from("<I", buf, field)[0]
        else:
            field, start = pos + 6, pos + 8
            length = struct.unpack_from("<H", buf, field)[0]
        if vr == b"SQ":
            pos = _walk_sequence(
                buf, start, length, lengths + ((field,) if length != _UNDEFINED else ()), out
            )
            continue
        if length == _UNDEFINED:
            raise ValueError(f"element {tag:08X} of undefined length is not expected in an SR")
        out.append(_Leaf(tag, vr.decode("ascii"), pos, start, start + length, lengths))
        pos = start + length
    return pos


def _walk_sequence(buf: bytes, pos: int, length: int, lengths: tuple[int, ...], out: list[_Leaf]) -> int:
    end = len(buf) if length == _UNDEFINED else pos + length
    while pos < end:
        tag = struct.unpack_from("<HH", buf, pos)
        item_tag = tag[0] << 16 | tag[1]
        item_length = struct.unpack_from("<I", buf, pos + 4)[0]
        if item_tag == _SEQUENCE_END:
            return pos + 8
        if item_tag != _ITEM:
            raise ValueError(f"expected a sequence item at byte {pos}, found tag {item_tag:08X}")
        if item_length == _UNDEFINED:
            pos = _walk(buf, pos + 8, len(buf), lengths, out)
        else:
            pos = _walk(buf, pos + 8, pos + 8 + item_length, lengths + (pos + 4,), out)
    return end


# --- stand-in values ----------------------------------------------------------------------------

#: Slots the result itself fills, before the headers' values: its series and instance UIDs, the
#: tracking UID derived from them, and the probability (written as DS and as FD).
_SR_SERIES, _SR_INSTANCE, _TRACKING, _P_TEXT, _P_NUMBER = range(5)
_RESERVED = 5


class _Sentinels:
    """Unique, valid stand-ins for each distinct (VR, value) of the headers, and which slot each
    stands for; equal values share one slot."""

    def __init__(self) -> None:
        self._root = str(10**29 + secrets.randbelow(9 * 10**29))
        self._by_value: dict[tuple[str, Any], int] = {}
        self.values: list[Any] = [None] * _RESERVED  # slot number -> the study's value
        self.text: dict[str, tuple[int, str]] = {}  # sentinel text -> (slot number, kind)
        self.numbers: dict[float, int] = {}  # sentinel number -> slot number

    def slot(self, vr: str, value: Any) -> int:
        """The slot number of ``value``, a text or one number."""
        key = (vr, str(value) if vr in _TEXT_SLOTS or vr == "DS" else value)
        n = self._by_value.get(key)
        if n is None:
            n = self._by_value[key] = len(self.values)
            self.values.append(value)
        return n

    def sentinel(self, vr: str, n: int) -> Any:
        """The stand-in of slot ``n`` for a value of ``vr``, registered to be looked for."""
        if vr in _NUMBER_SLOTS or vr == "DS":
            # numbers are also looked for as highdicom writes them in NUM content items: a DS
            # made with auto_format (Rows, pixel spacing) and, for floats, an FD
            number: Any = 60000 - n if vr in ("US", "UL", "SS", "SL") else 7.0e3 + n / 1024
            stand_in = DSfloat(repr(number)) if vr == "DS" else number
            self.numbers[float(number)] = n
            self.text[str(DS(stand_in, auto_format=True))] = (n, "ds")
            return stand_in
        day = datetime.date(1901, 1, 1) + datetime.timedelta(days=n)
        text = {
            "UI": f"2.25.{self._root}{n:04d}",
            "DA": day.strftime("%Y%m%d"),
            "DT": day.strftime("1902%m%d") + f"000000.{n:06d}",
            "TM": f"23{n // 60 % 60:02d}{n % 60:02d}.{n:06d}",
            "AS": f"{n % 1000:03d}W",
            "PN": f"ZQ{n:04d}QZ^Z",
        }.get(vr, f"ZQ{n:04d}QZ")
        self.text[text] = (n, "copy")
        return text

    def uid(self, n: int) -> str:
        """A stand-in UID that is not looked for."""
        return f"2.25.{self._root}{n:04d}"


def _slots_of(elem: DataElement) -> list[Any] | None:
    """The values of ``elem`` that get slots (one per number of a multi-valued number), or None
    when its value goes into the shape as it is."""
    value = elem.value
    if elem.keyword in _KEY_KEYWORDS or value is None or value == "" or isinstance(value, bytes):
        return None
    many = isinstance(value, (MultiValue, list, tuple))
    if elem.VR in _TEXT_SLOTS:
        return None if many or "\\" in str(value) else [value]
    if elem.VR == "DS" or elem.VR in _NUMBER_SLOTS:
        values = list(value) if many else [value]
        return values if values and all(v is not None and v != "" for v in values) else None
    return None


def _shape_of(ds: Dataset, sentinels: _Sentinels | None) -> tuple[Any, ...]:
    """The shape of ``ds``: tags, VRs, the values highdicom may interpret, and, with ``sentinels``,
    the slot of each value it copies (which copied values are equal to which)."""
    shape: list[Any] = []
    for elem in ds:
        if elem.VR == "SQ":
            shape.append((elem.tag, "SQ", tuple(_shape_of(item, sentinels) for item in elem.value)))
            continue
        values = _slots_of(elem) if sentinels is not None else None
        if values is None:
            shape.append((elem.tag, elem.VR, _hashable(elem.value)))
        else:
            assert sentinels is not None
            many = isinstance(elem.value, (MultiValue, list, tuple))
            shape.append((elem.tag, elem.VR, many, tuple(sentinels.slot(elem.VR, v) for v in values)))
    return tuple(shape)


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple, MultiValue)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, pydicom.Sequence):
        return tuple(_shape_of(item, None) for item in value)
    if isinstance(value, (bytes, int)) or type(value) is float:
        return value
    return str(value)


def _stand_in(ds: Dataset, sentinels: _Sentinels) -> Dataset:
    """A copy of ``ds`` with each value it shares with the SR replaced by its sentinel."""
    out = copy.deepcopy(ds)
    _replace(out, sentinels)
    return out


def _replace(ds: Dataset, sentinels: _Sentinels) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _replace(item, sentinels)
            continue
        values = _slots_of(elem)
        if values is not None:
            # made only for a template: the shape of every study needs the slot numbers alone
            stand_ins = [sentinels.sentinel(elem.VR, sentinels.slot(elem.VR, v)) for v in values]
            elem.value = stand_ins if isinstance(elem.value, (MultiValue, list, tuple)) else stand_ins[0]


# --- templates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    leaf: _Leaf
    number: int | None  # the slot; None for a clock value
    #: "copy" (the value as it is), "ds" or "number" (as highdicom writes a number in a NUM content
    #: item, or copies one), "date" or "time" (the clock)
    kind: str = "copy"


@dataclass(frozen=True)
class _Template:
    """An encoded SR of stand-in values and where each slot's value goes."""

    data: bytes
    slots: tuple[_Slot, ...]
    encodings: tuple[str, ...]

    def fill(self, values: Sequence[Any], clock: dict[str, Any]) -> bytes:
        """The SR with ``values`` (by slot number) and the ``clock`` (:func:`_clock`) written in."""
        elements: list[bytes] = []
        grown: dict[int, int] = {}
        for slot in self.slots:
            leaf = slot.leaf
            value = clock[slot.kind] if slot.number is None else values[slot.number]
            if slot.kind == "ds":  # as highdicom writes a NUM content item's value
                value = DS(value, auto_format=True)
            elif slot.kind == "number":
                value = int(value) if leaf.vr in ("US", "UL", "SS", "SL") else float(value)
            element = _element_bytes(leaf.tag, leaf.vr, value, self.encodings)
            elements.append(element)
            change = len(element) - (leaf.end - leaf.start)
            for field in leaf.lengths:
                grown[field] = grown.get(field, 0) + change
        buf = bytearray(self.data)
        for field, change in grown.items():  # the length fields of the sequences, items and meta group
            struct.pack_into("<I", buf, field, struct.unpack_from("<I", buf, field)[0] + change)
        out: list[bytes | bytearray] = []
        pos = 0
        for slot, element in zip(self.slots, elements, strict=True):
            out.append(buf[pos : slot.leaf.start])
            out.append(element)
            pos = slot.leaf.end
        out.append(buf[pos:])
        return b"".join(out)


def _element_bytes(tag: int, vr: str, value: Any, encodings: tuple[str, ...]) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, DataElement(tag, vr, value), list(encodings))
    return fp.getvalue()


def _find_slots(data: bytes, sentinels: _Sentinels) -> list[_Slot] | None:
    """Where the sentinels (and the clock) are in the encoded SR; None when a sentinel also
    appears inside a longer value, where filling in would not reach it."""
    slots: list[_Slot] = []
    exact: set[int] = set()
    for leaf in _leaves(data):
        if leaf.vr in _NUMBER_SLOTS:
            fmt = _NUMBER_SLOTS[leaf.vr]
            if leaf.end - leaf.value == struct.calcsize(fmt):
                n = sentinels.numbers.get(struct.unpack_from(fmt, data, leaf.value)[0])
                if n is not None:
                    slots.append(_Slot(leaf, n, "number"))
        elif not leaf.lengths and leaf.tag in _CLOCK:
            slots.append(_Slot(leaf, None, _CLOCK[leaf.tag]))
        elif leaf.tag == _CONTRIBUTION_DATETIME:
            slots.append(_Slot(leaf, None, "datetime"))
        else:
            found = sentinels.text.get(data[leaf.value : leaf.end].rstrip(b" \x00").decode("latin-1"))
            if found is not None:
                slots.append(_Slot(leaf, *found))
                exact.add(leaf.value)
    # a text found inside a longer value; numbers are left to the proof (their digits may well
    # appear inside a UID)
    texts = sorted((t for t, (_, kind) in sentinels.text.items() if kind == "copy"), key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(t) for t in texts).encode("latin-1"))
    if any(m.start() not in exact for m in pattern.finditer(data)):
        return None
    return slots


class SRTemplates:
    """Builds SRs as :func:`dicomnode.results.build_sr` does, from a proven template of the header
    shape where there is one (thread-safe; the last ``max_shapes`` shapes are remembered)."""

    def __init__(
        self, max_shapes: int = 64, *, clock: Callable[[], datetime.datetime] = datetime.datetime.now
    ) -> None:
        self.max_shapes = max_shapes
        self.clock = clock
        self._lock = threading.Lock()
        self._shapes: OrderedDict[tuple[Any, ...], _Template | None] = OrderedDict()
        #: SRs filled in from a template, and SRs built by highdicom
        self.filled = 0
        self.built = 0

    def build(
        self,
        sources: Sequence[Dataset],
        finding: Finding,
        card: ModelCard,
        *,
        uids: ResultUIDs,
        minimal: bool = False,
        predecessors: Sequence[Dataset] = (),
    ) -> tuple[Dataset, bytes]:
        """The SR of ``sources`` and its Part 10 bytes: the bytes :func:`build_sr` and
        :func:`encode` give, but for the creation time. Raises as :func:`build_sr` does."""
        sources = list(sources)
        same_study(sources, "build_sr")
        check_inputs(finding, card)
        headers = [evidence_header(ds, minimal=minimal) for ds in sources]
        predecessors = list(predecessors)
        sentinels = _Sentinels()
        shape = (
            repr(card),
            finding.present,
            minimal,
            tuple(_shape_of(h, sentinels) for h in headers),
            tuple(_shape_of(p, sentinels) for p in predecessors),
        )
        values = list(sentinels.values)
        values[_SR_SERIES : _P_NUMBER + 1] = [
            uids.sr_series,
            uids.sr_instance,
            tracking_uid(uids),
            finding.probability,
            finding.probability,
        ]
        with self._lock:
            known = shape in self._shapes
            template = self._shapes.get(shape)
            if known:
                self._shapes.move_to_end(shape)
        if template is not None:
            data = template.fill(values, _clock(self.clock()))
            self.filled += 1
            return pydicom.dcmread(BytesIO(data)), data
        sr = sr_from_headers(headers, finding, card, uids=uids, predecessors=predecessors)
        data = encode(sr)
        self.built += 1
        if not known:
            template = self._prove(headers, predecessors, finding, card, sentinels, data, values, sr)
            with self._lock:
                self._shapes[shape] = template
                while len(self._shapes) > self.max_shapes:
                    self._shapes.popitem(last=False)
        return sr, data

    def _prove(
        self,
        headers: Sequence[Dataset],
        predecessors: Sequence[Dataset],
        finding: Finding,
        card: ModelCard,
        sentinels: _Sentinels,
        data: bytes,
        values: Sequence[Any],
        sr: Dataset,
    ) -> _Template | None:
        """The template of this shape, or None when filled with ``values`` it does not give
        ``data``, highdicom's SR of them."""
        try:
            template = _template(headers, predecessors, finding, card, sentinels)
        except Exception as exc:  # highdicom refused a stand-in: build this shape every time
            log.info("results.sr_template_unused", reason=type(exc).__name__)
            return None
        if template is None:
            log.info("results.sr_template_unused", reason="a stand-in value was copied into a longer value")
            return None
        clock = {"date": sr.InstanceCreationDate, "time": sr.InstanceCreationTime}
        for item in sr.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:
                clock.setdefault("datetime", item.ContributionDateTime)
        if template.fill(values, clock) != data:
            log.info("results.sr_template_unused", reason="the filled template differs from highdicom's SR")
            return None
        return template


def _clock(now: datetime.datetime) -> dict[str, Any]:
    """The clock values of an SR made at ``now``, as highdicom writes them."""
    return {"date": DA(now.date()), "time": TM(now.time()), "datetime": DT(now)}


def _template(
    headers: Sequence[Dataset],
    predecessors: Sequence[Dataset],
    finding: Finding,
    card: ModelCard,
    sentinels: _Sentinels,
) -> _Template | None:
    """highdicom's SR of the stand-ins, and the places of their slots in it."""
    uids = ResultUIDs(
        sentinels.sentinel("UI", _SR_SERIES),
        sentinels.sentinel("UI", _SR_INSTANCE),
        sentinels.uid(9998),  # the SC's UIDs are not in the SR
        sentinels.uid(9999),
    )
    sentinels.text[tracking_uid(uids)] = (_TRACKING, "copy")
    # a probability on the same side of the threshold, with digits no other value has
    t = finding.threshold
    p = t + (1.0 - t) * 0.6180339887498949 if finding.present else t * 0.6180339887498949
    sentinels.text[str(DS(p, auto_format=True))] = (_P_TEXT, "ds")
    sentinels.numbers[p] = _P_NUMBER
    sr = sr_from_headers(
        [_stand_in(h, sentinels) for h in headers],
        Finding(probability=p, threshold=t),
        card,
        uids=uids,
        predecessors=[_stand_in(r, sentinels) for r in predecessors],
    )
    data = encode(sr)
    slots = _find_slots(data, sentinels)
    if slots is None:
        return None
    return _Template(data, tuple(slots), tuple(convert_encodings(sr.get("SpecificCharacterSet"))))
