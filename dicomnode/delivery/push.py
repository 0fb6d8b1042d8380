"""A C-STORE SCU for pushing files to a DICOM node (``dicomnode push``, the demo, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

# Send files as their raw bytes (no decode/re-encode): fast, and sends exactly what is on disk.
_config.STORE_SEND_CHUNKED_DATASET = True


@dataclass(frozen=True)
class PushResult:
    path: Path
    status: int | None  # None: not sent (no context, association lost)
    error: str | None = None


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files given, plus every file below folders given, sorted."""
    out: list[Path] = []
    for p in paths:
        out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return out


def push_files(
    files: Sequence[Path],
    host: str,
    port: int,
    *,
    called_ae: str = "DICOMNODE",
    calling_ae: str = "DICOMNODE-SCU",
    timeout: float = 30,
) -> list[PushResult]:
    """Send every file over one association, in each file's own transfer syntax."""
    headers = []
    for f in files:
        meta = read_file_meta_info(f)  # only the file meta: the data set goes as raw bytes
        headers.append((f, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.maximum_pdu_size = 0
    # One context per (SOP class, transfer syntax): files go as their raw bytes, so each needs a
    # context in its own syntax (an acceptor takes the first syntax of a multi-syntax context).
    contexts = sorted({(cls, ts) for _, cls, ts in headers})
    if len(contexts) > 128:
        raise ValueError(
            "more than 128 SOP class/transfer syntax pairs in one push: send the files in batches"
        )
    for cls, ts in contexts:
        ae.add_requested_context(cls, [ts])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError(
            f"could not associate with {called_ae}@{host}:{port}: is the node running and the AE title right?"
        )
    results = []
    try:
        for f, _, _ in headers:
            try:
                rsp = assoc.send_c_store(f)
                st = int(rsp.Status) if rsp is not None and "Status" in rsp else None
                results.append(PushResult(f, st, None if st is not None else "no response"))
            except Exception as exc:
                results.append(PushResult(f, None, str(exc)))
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return results
