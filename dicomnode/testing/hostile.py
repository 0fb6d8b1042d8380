"""Hostile and sloppy input for tests and benches: raw PDUs, a raw DICOM peer, and the bombs.

What an attacker or a careless modality sends, built so the *sender* stays small: bodies are
yielded in chunks (a 1 GiB deflate bomb is compressed from zeros a MiB at a time; a 6000 x 6000
RLE image is written run by run), so a test process that sends them does not hold what the node is
asked to hold. :class:`RawPeer` speaks the upper layer itself (PS3.8 9.3) so a probe can send what
no well-behaved SCU would: PDVs of one byte, lengths it never sends, a request trickled a byte at a
time, and report exactly what came back (a status, an A-ABORT, an A-ASSOCIATE-RJ, a closed
connection).

Shared by several tests (tests/integration/test_hostile.py runs them all against a real
``dicomnode serve``): add functions, do not change what others rely on.
"""

from __future__ import annotations

import io
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_items import MaximumLengthSubItem
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.net.dimse import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    C_ECHO_RQ,
    C_STORE_RQ,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    MESSAGE_ID,
    NO_DATA_SET,
    STATUS,
    command_us,
    decode_command,
    encode_command,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

A_ASSOCIATE_RQ_TYPE, A_ASSOCIATE_AC_TYPE, A_ASSOCIATE_RJ_TYPE = 0x01, 0x02, 0x03
P_DATA_TF_TYPE, A_RELEASE_RQ_TYPE, A_RELEASE_RP_TYPE, A_ABORT_TYPE = 0x04, 0x05, 0x06, 0x07
PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
#: Message control header bits of a PDV (PS3.8 E.2): bit 0 command, bit 1 last fragment.
COMMAND_LAST, COMMAND_MORE, DATA_LAST, DATA_MORE = 0x03, 0x01, 0x02, 0x00
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


# --------------------------------------------------------------------------------------------
# raw PDUs (PS3.8 9.3)


def pdu_header(pdu_type: int, length: int) -> bytes:
    """The 6-byte header of a PDU of ``pdu_type`` announcing ``length`` bytes of body."""
    return struct.pack(">BBL", pdu_type, 0, length)


def p_data_header(data_len: int, context_id: int, control: int) -> bytes:
    """A P-DATA-TF header plus the header of its one PDV announcing ``data_len`` bytes of value."""
    return pdu_header(P_DATA_TF_TYPE, data_len + 6) + struct.pack(">LBB", data_len + 2, context_id, control)


def associate_rq(
    contexts: Sequence[tuple[int, str, Sequence[str]]],
    *,
    calling_ae: str = "HOSTILE",
    called_ae: str = "DICOMNODE",
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``contexts`` as (context ID, abstract syntax, transfer syntaxes)."""
    prim = A_ASSOCIATE()
    prim.application_context_name = APPLICATION_CONTEXT
    prim.calling_ae_title, prim.called_ae_title = calling_ae, called_ae
    items = []
    for cid, abstract, syntaxes in contexts:
        cx = build_context(abstract, list(syntaxes))
        cx.context_id = cid
        items.append(cx)
    prim.presentation_context_definition_list = items
    max_len = MaximumLengthNotification()
    max_len.maximum_length_received = max_pdu
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.99"
    prim.user_information = [max_len, impl]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return bytes(pdu.encode())


def _uid_value(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\0" * (len(raw) % 2)


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set (implicit VR little endian) announcing a data set."""
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, _uid_value(sop_class)),
            (COMMAND_FIELD, struct.pack("<H", C_STORE_RQ)),
            (MESSAGE_ID, struct.pack("<H", message_id)),
            (COMMAND_DATA_SET_TYPE, struct.pack("<H", 0)),
            (AFFECTED_SOP_INSTANCE_UID, _uid_value(sop_instance)),
        ]
    )


def c_echo_rq(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set."""
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, _uid_value(Verification)),
            (COMMAND_FIELD, struct.pack("<H", C_ECHO_RQ)),
            (MESSAGE_ID, struct.pack("<H", message_id)),
            (COMMAND_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)),
        ]
    )


def p_data_pdus(chunks: Iterable[bytes], context_id: int, *, command: bool, max_pdv: int) -> Iterator[bytes]:
    """``chunks`` (one message's value, in any cut) as P-DATA-TF PDUs of one PDV each, at most
    ``max_pdv`` bytes of value per PDV, the last fragment flagged. Streams: holds one PDV."""
    more, last = (COMMAND_MORE, COMMAND_LAST) if command else (DATA_MORE, DATA_LAST)
    pending = b""
    for chunk in chunks:
        view = memoryview(chunk)
        while len(view):
            if len(pending) == max_pdv:
                yield p_data_header(len(pending), context_id, more) + pending
                pending = b""
            take = max_pdv - len(pending)
            pending += bytes(view[:take])
            view = view[take:]
    yield p_data_header(len(pending), context_id, last) + pending


# --------------------------------------------------------------------------------------------
# a raw peer


@dataclass(frozen=True)
class Outcome:
    """What a sender got back: ``kind`` is status | abort | reject | release | closed | timeout."""

    kind: str
    status: int | None = None
    detail: str = ""

    def __str__(self) -> str:
        if self.kind == "status":
            assert self.status is not None
            return f"status 0x{self.status:04X}"
        names = {
            "abort": "A-ABORT",
            "reject": "A-ASSOCIATE-RJ",
            "release": "A-RELEASE-RP",
            "closed": "connection closed",
            "timeout": "no answer",
        }
        text = names.get(self.kind, self.kind)
        return f"{text} ({self.detail})" if self.detail else text


class RawPeer:
    """One TCP connection to a DICOM node, spoken PDU by PDU."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", source: str | None = None, timeout: float = 10):
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.timeout = timeout
        self.peer_max_pdu = 16384
        self.accepted: dict[int, str] = {}  # context ID -> transfer syntax

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading

    def _recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            part = self.sock.recv(min(n - len(out), MiB))
            if not part:
                raise ConnectionError("closed")
            out += part
        return bytes(out)

    def read_pdu(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next PDU (type, body); raises ConnectionError when closed, TimeoutError when quiet."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        head = self._recv_exact(6)
        (length,) = struct.unpack(">L", head[2:])
        if length > 64 * MiB:
            raise ConnectionError(f"PDU of {length} bytes announced")
        return head[0], self._recv_exact(length)

    def outcome_of_next_pdu(self, timeout: float | None = None) -> Outcome:
        """What the node answers next, read until a whole DIMSE response, an abort or a close."""
        command = bytearray()
        try:
            while True:
                pdu_type, body = self.read_pdu(timeout)
                if pdu_type == P_DATA_TF_TYPE:
                    pos = 0
                    while pos + 6 <= len(body):
                        (item_len,) = struct.unpack(">L", body[pos : pos + 4])
                        control = body[pos + 5]
                        command += body[pos + 6 : pos + 4 + item_len]
                        pos += 4 + item_len
                        if control & 0x01 and control & 0x02:
                            values = decode_command(bytes(command))
                            return Outcome("status", command_us(values, STATUS))
                    continue
                if pdu_type == A_ABORT_TYPE:
                    return Outcome("abort")
                if pdu_type == A_ASSOCIATE_RJ_TYPE:
                    return Outcome("reject")
                if pdu_type == A_RELEASE_RP_TYPE:
                    return Outcome("release")
                return Outcome(PDU_NAMES.get(pdu_type, f"PDU 0x{pdu_type:02X}"))
        except TimeoutError:
            return Outcome("timeout")
        except OSError as exc:  # ConnectionError, reset
            return Outcome("closed", detail="" if str(exc) == "closed" else type(exc).__name__)

    def closed_within(self, timeout: float) -> bool:
        """True once the node closes the connection (end of stream or reset) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.sock], [], [], left)[0]:
                try:
                    if not self.sock.recv(65536):
                        return True
                except OSError:
                    return True
        return False

    # -- sending

    def send(self, data: bytes) -> bool:
        """Send ``data``; False when the node has closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def send_all(self, pdus: Iterable[bytes]) -> bool:
        """Send every PDU; False (and stop) once the node has closed the connection or answered
        early (a refusal before the data set is whole)."""
        for pdu in pdus:
            if not self.send(pdu):
                return False
        return True

    def associate(
        self,
        contexts: Sequence[tuple[int, str, Sequence[str]]],
        *,
        calling_ae: str = "HOSTILE",
        called_ae: str = "DICOMNODE",
    ) -> Outcome:
        """Send an A-ASSOCIATE-RQ; Outcome("accepted") and :attr:`accepted` filled, or what came."""
        self.send(associate_rq(contexts, calling_ae=calling_ae, called_ae=called_ae))
        try:
            pdu_type, body = self.read_pdu()
        except TimeoutError:
            return Outcome("timeout")
        except OSError:
            return Outcome("closed")
        if pdu_type != A_ASSOCIATE_AC_TYPE:
            return Outcome(
                {A_ASSOCIATE_RJ_TYPE: "reject", A_ABORT_TYPE: "abort"}.get(pdu_type, f"{pdu_type}")
            )
        ac = A_ASSOCIATE_AC()
        ac.decode(pdu_header(pdu_type, len(body)) + body)
        for item in ac.presentation_context:
            if item.result == 0 and item.transfer_syntax is not None and item.context_id is not None:
                self.accepted[int(item.context_id)] = str(item.transfer_syntax)
        for sub in ac.user_information.user_data if ac.user_information else []:
            if isinstance(sub, MaximumLengthSubItem) and sub.maximum_length_received:
                self.peer_max_pdu = int(sub.maximum_length_received)
        return Outcome("accepted")

    def store(
        self,
        context_id: int,
        sop_class: str,
        sop_instance: str,
        body: Iterable[bytes],
        *,
        max_pdv: int | None = None,
        timeout: float = 30,
    ) -> Outcome:
        """C-STORE ``body`` (the data set's bytes, in chunks) and return what the node answered.

        If the node answers or closes before the whole body is sent (a refusal as it arrives), the
        rest is not sent."""
        pdv = max_pdv or max(1, min(self.peer_max_pdu, 64 * KiB) - 6)
        command = c_store_rq(sop_class, sop_instance)
        if not self.send_all(p_data_pdus([command], context_id, command=True, max_pdv=pdv)):
            return self.outcome_of_next_pdu(timeout)
        for pdu in p_data_pdus(body, context_id, command=False, max_pdv=pdv):
            if not self.send(pdu):
                break
            if select.select([self.sock], [], [], 0)[0]:  # an early answer: stop sending
                break
        return self.outcome_of_next_pdu(timeout)

    def echo(self, context_id: int = 1, timeout: float = 10) -> Outcome:
        self.send_all(p_data_pdus([c_echo_rq()], context_id, command=True, max_pdv=16000))
        return self.outcome_of_next_pdu(timeout)

    def release(self, timeout: float = 5) -> Outcome:
        self.send(pdu_header(A_RELEASE_RQ_TYPE, 4) + bytes(4))
        return self.outcome_of_next_pdu(timeout)


def echo_context(context_id: int = 1) -> tuple[int, str, Sequence[str]]:
    return (context_id, str(Verification), [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])


# --------------------------------------------------------------------------------------------
# data sets as bytes


def data_set_bytes(ds: Dataset) -> bytes:
    """``ds`` encoded as its file meta's transfer syntax says, without preamble or file meta: the
    bytes a C-STORE carries (deflated ones deflated)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    assert raw[128:132] == b"DICM"
    (meta_len,) = struct.unpack("<L", raw[140:144])
    return raw[144 + meta_len :]


def explicit_element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element (``value`` padded to even length by the caller)."""
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in ("OB", "OW", "OF", "SQ", "UT", "UN", "OD", "OL", "OV", "UC", "UR"):
        return struct.pack("<HH2sHL", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


def with_raw_value(body: bytes, tag: int, vr: str, raw_value: bytes) -> bytes:
    """An explicit VR little endian ``body`` with the value of its (short-length) element ``tag``
    replaced byte for byte, e.g. a UID ending in a newline that pydicom would strip."""
    marker = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode())
    at = body.index(marker)
    (old_len,) = struct.unpack("<H", body[at + 6 : at + 8])
    value = raw_value + b"\x00" * (len(raw_value) % 2)
    return body[: at + 6] + struct.pack("<H", len(value)) + value + body[at + 8 + old_len :]


def header_dataset(
    *,
    sop_class: str = ComputedRadiographyImageStorage,
    modality: str = "CR",
    study_uid: str | None = None,
    rows: int = 512,
    columns: int = 512,
    bits: int = 16,
) -> Dataset:
    """A radiograph's header with no pixel data yet, with file meta (explicit VR little endian)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.AccessionNumber = "HOSTILE1"
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "HOSTILE^PROBE", "HOSTILE01"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, min(bits, 12), min(bits, 12) - 1
    ds.PixelRepresentation = 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def deflate_bomb_bytes(
    inflated_bytes: int = GiB, *, before_uids: bool = False, header: Dataset | None = None
) -> bytes:
    """A Deflated Explicit VR Little Endian data set (the bytes a C-STORE carries) of about
    ``inflated_bytes / 1000`` bytes that inflates to ``inflated_bytes`` and more.

    The bulk is zeros: Pixel Data at the end of a plausible 16-bit CR header (``before_uids``
    false; the header parse can stop before it, the analysis cannot), or a private OB element
    placed before the Study/Series Instance UIDs (``before_uids`` true: a header parse has to
    inflate through it). Compressed a MiB at a time: the builder never holds the inflated data.
    """
    ds = header or header_dataset()
    if before_uids:
        ds.add_new(0x00090010, "LO", "HOSTILE")
    else:
        side = int((inflated_bytes // 2) ** 0.5)
        ds.Rows = ds.Columns = side
        inflated_bytes = side * side * 2
    head = data_set_bytes(ds)  # explicit VR LE, the order a parser meets the elements in
    tag = 0x00091000 if before_uids else 0x7FE00010
    bulk = struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, b"OB", 0, inflated_bytes)
    if before_uids:  # the private block goes after every (0008,xxxx), before Patient's Name
        at = head.index(struct.pack("<HH2s", 0x0010, 0x0010, b"PN"))
        first, rest = head[:at], head[at:]
    else:
        first, rest = head, b""
    # Raw deflate (PS3.5 A.5) in byte-aligned pieces, each compressed on its own: a MiB of zeros
    # is compressed once and its ~1 KiB repeated, valid since no piece refers back past its start.
    out = [_deflate_piece(first + bulk)]
    whole, part = divmod(inflated_bytes, MiB)
    out += [_deflate_piece(bytes(MiB))] * whole
    out.append(_deflate_piece(bytes(part) + rest, final=True))
    data = b"".join(out)
    return data + b"\x00" * (len(data) % 2)  # an odd deflated stream is padded (PS3.5 A.5)


def _deflate_piece(data: bytes, *, final: bool = False) -> bytes:
    """``data`` as raw deflate blocks that refer to nothing before them, ending byte-aligned
    (sync flush) or, when ``final``, with the last block."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


def deflate_bomb_chunks(
    inflated_bytes: int = GiB, *, before_uids: bool = False, header: Dataset | None = None
) -> Iterator[bytes]:
    """The data set of :func:`deflate_bomb_bytes`, streamed in pieces and built in milliseconds
    rather than seconds: one MiB of zeros is compressed once, between two full flushes (after a
    ``Z_FULL_FLUSH`` no back-reference reaches behind it, PS3.5 A.5 is raw deflate), and that
    piece is repeated. About 1 KiB on the wire per MiB inflated; padded to an even length."""
    ds = header or header_dataset()
    if before_uids:
        ds.add_new(0x00090010, "LO", "HOSTILE")
    else:
        side = int((inflated_bytes // 2) ** 0.5)
        ds.Rows = ds.Columns = side
        inflated_bytes = side * side * 2
    head = data_set_bytes(ds)
    tag = 0x00091000 if before_uids else 0x7FE00010
    bulk = struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, b"OB", 0, inflated_bytes)
    if before_uids:
        at = head.index(struct.pack("<HH2s", 0x0010, 0x0010, b"PN"))
        first, rest = head[:at], head[at:]
    else:
        first, rest = head, b""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = z.compress(first + bulk) + z.flush(zlib.Z_FULL_FLUSH)
    sent = len(piece)
    yield piece
    whole, part = divmod(inflated_bytes, MiB)
    if whole:
        block = z.compress(bytes(MiB)) + z.flush(zlib.Z_FULL_FLUSH)
        for _ in range(whole):
            yield block
        sent += whole * len(block)
    tail = z.compress(bytes(part) + rest) + z.flush()
    sent += len(tail)
    yield tail + b"\x00" * (sent % 2)


def rle_segment_of_constant_rows(rows: int, columns: int, value: int = 0) -> bytes:
    """One RLE segment (PS3.5 G.3) of ``rows`` rows of ``columns`` equal bytes, each row encoded
    on its own as replicate runs of at most 128 bytes: about 1/64 of the decoded size."""
    runs = []
    left = columns
    while left:
        n = min(left, 128)
        runs.append(struct.pack("bB", -(n - 1), value))
        left -= n
    return b"".join(runs) * rows


def rle_pixel_bomb(rows: int = 6000, columns: int = 6000) -> Dataset:
    """An RLE Lossless 8-bit CR chest radiograph of ``rows`` x ``columns`` that is about 550 KiB
    on the wire at 6000 x 6000 and 34 MiB decoded (more as the pipeline's floats). Written run by
    run: no encoder, no decoded image in the builder."""
    return _rle_radiograph(rows, columns, data_rows=rows)


def sloppy_radiograph(seed: int = 6, **values: str) -> Dataset:
    """A phantom chest radiograph with the header values real modalities send and validators
    hate: PatientSex 'U', PatientBirthDate '1960', StudyDate '2024-01-01' unless ``values`` says
    otherwise (keyword=value, set without validation)."""
    import warnings

    from dicomnode.testing.phantoms import make_phantom

    ds = make_phantom(np.random.default_rng(seed), False, size=128)
    values = {"PatientSex": "U", "PatientBirthDate": "1960", "StudyDate": "2024-01-01", **values}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return ds


def zeros(n: int, chunk: int = MiB) -> Iterator[bytes]:
    """``n`` zero bytes in chunks of ``chunk`` (shares one buffer)."""
    buf = bytes(min(n, chunk))
    while n:
        k = min(n, chunk)
        yield buf if k == len(buf) else buf[:k]
        n -= k


def claimed_size_pixel_bomb(rows: int = 65535, columns: int = 65535, *, data_rows: int = 4) -> Dataset:
    """An RLE Lossless 8-bit CR chest radiograph whose header claims ``rows`` x ``columns`` (65535
    x 65535 = 4 GiB decoded by default, the largest the standard allows) while its one fragment
    holds only ``data_rows`` rows: a few KiB on the wire. A decoder sizes its output from the
    header, so decoding it allocates the whole image before finding the data short; only a size
    check on the header (Rows x Columns) stops it."""
    return _rle_radiograph(rows, columns, data_rows=data_rows)


def _rle_radiograph(rows: int, columns: int, *, data_rows: int) -> Dataset:
    """An RLE Lossless 8-bit CR whose header says ``rows`` x ``columns`` and whose one fragment
    holds ``data_rows`` constant rows, written run by run."""
    ds = header_dataset(rows=rows, columns=columns, bits=8)
    ds.BitsStored, ds.HighBit = 8, 7
    segment = rle_segment_of_constant_rows(data_rows, columns, 0x40)
    if len(segment) % 2:
        segment += b"\x00"
    rle_header = struct.pack("<16L", 1, 64, *([0] * 14))
    ds.PixelData = encapsulate([rle_header + segment])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = RLELossless
    return ds


__all__ = [
    "GiB",
    "KiB",
    "MiB",
    "Outcome",
    "RawPeer",
    "associate_rq",
    "c_echo_rq",
    "c_store_rq",
    "claimed_size_pixel_bomb",
    "data_set_bytes",
    "deflate_bomb_bytes",
    "deflate_bomb_chunks",
    "echo_context",
    "explicit_element",
    "header_dataset",
    "p_data_header",
    "p_data_pdus",
    "pdu_header",
    "rle_pixel_bomb",
    "rle_segment_of_constant_rows",
    "sloppy_radiograph",
    "with_raw_value",
    "zeros",
]
