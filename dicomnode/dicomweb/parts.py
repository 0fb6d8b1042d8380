"""A STOW-RS request body, read as it arrives: each ``application/dicom`` part into a receive file.

The body is ``multipart/related; type="application/dicom"`` (PS3.18 8.6.1.2, 10.5.1.2): parts
that are each a Part 10 file. ``python-multipart``'s streaming parser (bounded header count and
size) splits it; each part's File Meta Information is read from its first bytes (at most
:data:`MAX_FILE_META_BYTES`), then the data set is streamed into an
:class:`~dicomnode.storage.IncomingFile` behind the node's own file meta, exactly as the C-STORE
listener writes one, and held to ``max_part_bytes`` (``DICOMNODE_MAX_DATASET_BYTES``): past it the
file is deleted and the rest of the part dropped. A complete part goes to the node's C-STORE
callback (:class:`dicomnode.receive.StoreHandler`: the same checks, durable write, SQL row and
study tracking as a C-STORE), which answers a DIMSE status; a part cut off by the end of the
body is deleted and never handed on.
"""

from __future__ import annotations

import io
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import UID
from python_multipart.multipart import MultipartParser, parse_options_header

from dicomnode.net import StoreRequest, status
from dicomnode.receive.header import InstanceHeader, read_header, read_header_from
from dicomnode.storage import IncomingFile, encode_file_meta, read_file_meta

__all__ = ["MAX_FILE_META_BYTES", "MAX_PARTS", "BodyError", "PartOutcome", "StowBody"]

#: Largest File Meta Information a part may carry (ours is about 200 bytes; PS3.10 sets no bound)
MAX_FILE_META_BYTES = 1 << 16
_PREAMBLE = 128 + 4  # preamble + "DICM"
_GROUP_LENGTH_END = _PREAMBLE + 12  # (0002,0000) UL 4 <value>
#: Parts one request may carry (each leaves a small outcome behind until the answer is sent)
MAX_PARTS = 50_000
#: Headers one part may carry, and the longest header line, in bytes
MAX_PART_HEADERS = 16
MAX_PART_HEADER_BYTES = 4096


class BodyError(ValueError):
    """The request body cannot be read as a STOW-RS request: the HTTP status and what to fix."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class PartOutcome:
    """What became of one part: the DIMSE status its instance was answered (as a C-STORE would
    be), with the UIDs its File Meta named (empty when it had none)."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int
    reason: str = ""  # why it was refused, for the log and the response's failure


def _refused(code: int, reason: str, sop_class: str = "", sop_instance: str = "") -> PartOutcome:
    return PartOutcome(sop_class, sop_instance, code, reason)


class StowBody:
    """Feed a STOW-RS body chunk by chunk (:meth:`feed`, then :meth:`finish`); every complete
    part is stored through ``store`` and its :class:`PartOutcome` appended to :attr:`outcomes`.

    ``study_uid`` (``POST /studies/{study}``): an instance of another study is refused with
    0xA900 and not stored. ``calling_ae`` goes into the records as the C-STORE's calling AE does."""

    def __init__(
        self,
        boundary: bytes,
        incoming_dir: Path,
        store: Callable[[StoreRequest], int],
        *,
        calling_ae: str,
        max_part_bytes: int = 0,
        min_free_bytes: int = 0,
        early_writeback: bool = True,
        study_uid: str | None = None,
        association: int = 0,
    ) -> None:
        self.incoming_dir = incoming_dir
        self.association = association
        self.store = store
        self.calling_ae = calling_ae
        self.max_part_bytes = max_part_bytes
        self.min_free_bytes = min_free_bytes
        self.early_writeback = early_writeback
        self.study_uid = study_uid
        self.outcomes: list[PartOutcome] = []
        self.complete = False  # the closing boundary was read
        # the part being read
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._head = bytearray()  # its first bytes, until its file meta is read
        self._file: IncomingFile | None = None
        self._meta: tuple[str, str, str] | None = None  # SOP class, SOP instance, transfer syntax
        self._refusal: PartOutcome | None = None  # decided before the part ended: the rest is dropped
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_count=MAX_PART_HEADERS,
            max_header_size=MAX_PART_HEADER_BYTES,
        )

    # --- the caller's side ---------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        """Parse the next bytes of the body; raises :class:`BodyError` (400) on a malformed one."""
        if self.complete:
            return  # the epilogue after the closing boundary is ignored (RFC 2046 5.1.1)
        try:
            self._parser.write(chunk)
        except BodyError:
            self.discard()
            raise
        except Exception as exc:  # python-multipart's parse errors: a body that is no multipart
            self.discard()
            raise BodyError(400, f"the body is not multipart/related: {type(exc).__name__}: {exc}") from None

    def finish(self) -> None:
        """The body ended: raises :class:`BodyError` (400) when it stopped before its closing
        boundary (the part in progress is deleted, never stored)."""
        if not self.complete:
            self.discard()
            raise BodyError(
                400, "the body ends before its closing boundary (truncated): send the request again whole"
            )

    def discard(self) -> None:
        """Delete the receive file of a part still in progress (the request is cut short)."""
        if self._file is not None:
            self._file.discard()
            self._file = None

    # --- the parser's callbacks -----------------------------------------------------------
    def _reset_part(self) -> None:
        self._headers = {}
        self._field = bytearray()
        self._value = bytearray()
        self._head = bytearray()
        self._file = None
        self._meta = None
        self._refusal = None

    def _part_begin(self) -> None:
        if len(self.outcomes) >= MAX_PARTS:
            raise BodyError(413, f"more than {MAX_PARTS} parts: send the study in several requests")
        self._reset_part()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        kind, _ = parse_options_header(self._headers.get("content-type", "application/dicom"))
        if kind.lower() != b"application/dicom":
            self._refusal = _refused(
                status.SOP_CLASS_NOT_SUPPORTED,
                f"part of type {kind.decode('latin-1')[:64]!r}: only application/dicom parts are stored",
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._refusal is not None:
            return
        chunk = memoryview(data)[start:end]
        if self._file is not None:
            self._file.write(chunk)
            return
        self._head += chunk  # at most the meta's bound plus one chunk of the body
        self._open_if_meta_read()

    def _open_if_meta_read(self) -> None:
        """Once the part's file meta is in :attr:`_head`: open the receive file and write what
        follows the meta into it, behind our own file meta."""
        if len(self._head) < _GROUP_LENGTH_END:
            return
        head = bytes(self._head)
        group = struct.unpack_from("<HH2sH", head, _PREAMBLE)
        if head[128:132] != b"DICM" or group != (0x0002, 0x0000, b"UL", 4):
            self._refusal = _refused(
                status.CANNOT_UNDERSTAND, "not a Part 10 file (no DICM prefix and File Meta Information)"
            )
            self._head.clear()
            return
        (length,) = struct.unpack_from("<L", head, _PREAMBLE + 8)
        if length > MAX_FILE_META_BYTES:
            self._refusal = _refused(status.CANNOT_UNDERSTAND, "File Meta Information longer than 64 KiB")
            self._head.clear()
            return
        meta_end = _GROUP_LENGTH_END + length
        if len(head) < meta_end:
            return
        try:
            meta = read_file_meta(io.BytesIO(head[:meta_end]))
            uids = tuple(
                str(meta.get(k, "") or "").rstrip("\0 ")
                for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
            )
            if not all(uids) or not UID(uids[2]).is_transfer_syntax:
                raise ValueError("file meta lacks a SOP Class, SOP Instance or Transfer Syntax UID")
            own_meta = encode_file_meta(uids[0], uids[1], uids[2], self.calling_ae)
        except Exception as exc:  # pydicom's errors on a corrupt meta, ours on a missing UID
            self._refusal = _refused(
                status.CANNOT_UNDERSTAND, f"unreadable File Meta Information: {exc}"[:200]
            )
            self._head.clear()
            return
        sop_class, sop_instance, _ = uids
        self._meta = (sop_class, sop_instance, uids[2])
        if self.min_free_bytes and shutil.disk_usage(self.incoming_dir).free < self.min_free_bytes:
            self._refusal = _refused(
                status.OUT_OF_RESOURCES,
                "free disk space below DICOMNODE_MIN_FREE_BYTES",
                sop_class,
                sop_instance,
            )
            self._head.clear()
            return
        self._file = IncomingFile(
            str(self.incoming_dir), own_meta, self.early_writeback, max_bytes=self.max_part_bytes
        )
        self._file.write(memoryview(head)[meta_end:])
        self._head.clear()

    def _part_end(self) -> None:
        self.outcomes.append(self._finish_part())
        self._reset_part()

    def _finish_part(self) -> PartOutcome:
        sop_class, sop_instance, ts = self._meta or ("", "", "")
        if self._refusal is not None:
            self.discard()
            return self._refusal
        incoming = self._file
        if incoming is None:  # ended before its file meta did
            return _refused(status.CANNOT_UNDERSTAND, "part too short for a Part 10 file")
        self._file = None
        if incoming.refused is not None:  # too large, or our disk: deleted, the rest dropped
            return _refused(status.OUT_OF_RESOURCES, incoming.refused, sop_class, sop_instance)
        incoming.close()
        try:
            if self.study_uid is not None:
                hdr = _header(incoming, ts)
                if hdr is not None and hdr.study_uid != self.study_uid:
                    return _refused(
                        status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                        "instance of another study than the request URL names",
                        sop_class,
                        sop_instance,
                    )
            code = self.store(
                StoreRequest(
                    calling_ae=self.calling_ae,
                    sop_class_uid=sop_class,
                    sop_instance_uid=sop_instance,
                    transfer_syntax_uid=ts,
                    path=incoming.path,
                    head=bytes(incoming.head),
                    association=self.association,
                )
            )
        finally:
            incoming.path.unlink(missing_ok=True)  # still there only when it was not stored
        reason = "" if code == status.SUCCESS else status.MEANINGS.get(code, "refused")
        return PartOutcome(sop_class, sop_instance, code, str(reason))

    def _end(self) -> None:
        self.complete = True


def _header(incoming: IncomingFile, transfer_syntax: str) -> InstanceHeader | None:
    """The instance's header, or None when it cannot be read (the handler then refuses it)."""
    try:
        return read_header_from(bytes(incoming.head), transfer_syntax) or read_header(incoming.path)
    except Exception:  # pydicom's errors on corrupt input: the C-STORE checks answer for them
        return None
