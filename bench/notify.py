"""Time to notification: the last instance's C-STORE response at the sender -> the SR stored at the PACS.

    .venv/bin/python bench/notify.py --studies 20 --gap 1.5 --size 2048 [--burst 100] [--peers dcmtk]

A modality sends single-image chest radiograph phantoms to an embedded node, one study per
association, released after its last instance, ``--gap`` seconds apart; a PACS records when each
SR is stored. The node runs with the default settings (quiet period 5 s, in-process analysis,
SQLite, fsync) twice in the same run: with completion on release (DICOMNODE_RELEASE_GRACE_SECONDS
default) and, as the reference, with it off (every study waits out the quiet period). A warm-up
study per node (model loaded, decoding child started) is not counted. The second table splits the
time of the first mode by the timestamps the node records in SQL.

``--burst N`` then pushes N studies back to back to a fresh node with default settings (one
analysis thread) and reports their p95 against the issue's limit, quiet period + 3 s.

``--peers`` picks the modality and the PACS (the node always runs in this process):

- ``dcmtk`` (the default when ``storescu`` and ``storescp`` are on PATH), as the issue asks
  ("DCMTK storescu -> node -> storescp"): one ``storescu`` process per study and a ``storescp
  --fork`` writing files, both with TCP_NODELAY=1 (DCMTK 3.6.7 leaves Nagle on otherwise), so
  neither shares this process's GIL with the node. A study counts as sent when its storescu
  exits, which is after the last C-STORE response, the A-RELEASE and the process exit: a few ms
  late, so the figures are that much too short (optimistic). An SR counts as stored at its file's
  st_mtime_ns (storescp writes, closes, then answers, and does not fsync; the kernel stamps with
  its coarse clock, up to a tick early), also slightly early: optimistic by well under 10 ms.
- ``pynetdicom``: a pynetdicom SCU and :class:`dicomnode.testing.pacs.Receiver` in this process
  (the figures before 2026-12-05); both share the GIL with the node, which inflates the burst.
  Sent is time.time() at the last C-STORE response; stored is time.time() after the Receiver's
  write and fsync.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

from dicomnode.config import Destination, Settings  # noqa: E402
from dicomnode.logconfig import configure_logging  # noqa: E402
from dicomnode.node import Node  # noqa: E402
from dicomnode.store.models import Analysis, Study  # noqa: E402
from dicomnode.store.queries import as_utc  # noqa: E402
from dicomnode.testing.pacs import Received, Receiver  # noqa: E402
from dicomnode.testing.phantoms import PhantomStudy, write_phantom_studies  # noqa: E402
from tests.support import free_port, listening  # noqa: E402
from training.demo import ensure_demo_model  # noqa: E402
from worker.runners import make_runner  # noqa: E402

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

#: DCMTK's largest ``-pdu`` (maximum receive PDU; it refuses more). It sizes what storescp
#: receives from the node (the SC in fewer PDUs); storescu sends in PDUs of the node's maximum.
DCMTK_MAX_PDU = 131072

#: How long a file storescp wrote may still be growing when the count is reached: storescp writes
#: a 2048 x 2048 SC in milliseconds, so its st_mtime_ns is final well before this.
SETTLE_SECONDS = 0.5


def send_study(paths: list[Path], port: int) -> float:
    """Send a study over one association and release it; time.time() of the last response."""
    ae = AE(ae_title="MODALITY")
    ae.maximum_pdu_size = 0
    for cls, ts in sorted(
        {(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in map(read_file_meta_info, paths)}
    ):
        ae.add_requested_context(cls, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    if not assoc.is_established:
        raise ConnectionError(f"could not associate with the node on port {port}")
    last = 0.0
    try:
        for p in paths:
            rsp = assoc.send_c_store(p)
            last = time.time()
            if rsp is None or int(rsp.Status) != 0:
                raise RuntimeError(f"C-STORE of {p.name} failed: {rsp}")
    finally:
        assoc.release()
    return last


def _dcmtk_env() -> dict[str, str]:
    # DCMTK 3.6.7 as packaged leaves Nagle on unless told (DICOM-NOTES.md): about 40 ms per C-STORE.
    return {**os.environ, "TCP_NODELAY": "1"}


def send_study_storescu(paths: list[Path], port: int) -> float:
    """Send a study with one storescu process (one association, released at the end);
    time.time() when it exited, a few ms after the last C-STORE response."""
    argv = ["storescu", "-aet", "MODALITY", "-aec", "DICOMNODE", "-pdu", str(DCMTK_MAX_PDU)]
    done = subprocess.run(
        [*argv, "127.0.0.1", str(port), *map(str, paths)], env=_dcmtk_env(), capture_output=True, text=True
    )
    exited = time.time()
    if done.returncode != 0 or "Failed" in done.stderr:  # "Store Failed", "Store SCU Failed"
        raise RuntimeError(
            f"storescu to the node on port {port} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}; "
            f"run the same command with -v to see the association"
        )
    return exited


class Pacs(Protocol):
    """What run_node needs of a PACS: its port, and the objects stored once ``count`` arrived."""

    @property
    def port(self) -> int: ...

    def wait_for(self, count: int, timeout: float) -> list[Received]: ...


class StorescpPacs:
    """A ``storescp --fork`` writing what it is sent to ``out_dir``; stored time = file mtime."""

    def __init__(self, out_dir: Path, proc: subprocess.Popen[bytes], port: int) -> None:
        self.out_dir = out_dir
        self._proc = proc
        self._port = port

    @property
    def port(self) -> int:
        return self._port

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """Poll the folder until ``count`` files are there (or ``timeout``); read their headers."""
        deadline = time.monotonic() + timeout
        while len(list(self.out_dir.iterdir())) < count and time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"storescp exited with {self._proc.returncode} while the node was delivering"
                )
            time.sleep(0.1)
        time.sleep(SETTLE_SECONDS)  # the last file may still be being written
        return [self._received(p) for p in sorted(self.out_dir.iterdir())]

    @staticmethod
    def _received(path: Path) -> Received:
        ds = dcmread(path, stop_before_pixels=True)
        calling = str(ds.file_meta.get("SourceApplicationEntityTitle", "")).strip()
        return Received(
            path,
            str(ds.SOPClassUID),
            str(ds.SOPInstanceUID),
            str(ds.StudyInstanceUID),
            calling,
            path.stat().st_mtime_ns / 1e9,
        )


@contextmanager
def storescp_pacs(out_dir: Path) -> Iterator[StorescpPacs]:
    """Start ``storescp`` as BENCHPACS on a free port, writing to ``out_dir``; kill it on the way out."""
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # --fork: a child per association, as a PACS serves the node's kept-open delivery association
    # and a second one at once; the single-process default would queue the second behind the first.
    argv = ["storescp", "--fork", "-aet", "BENCHPACS", "-od", str(out_dir), "+xa", "-pdu", str(DCMTK_MAX_PDU)]
    log = out_dir.with_suffix(".log")  # a file, not a pipe nobody reads while the forked children log
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen([*argv, str(port)], env=_dcmtk_env(), stdout=log_fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"storescp did not listen on port {port} ({' '.join(argv)} {port}): "
                    f"{log.read_text(errors='replace').strip()[-500:]}"
                )
            time.sleep(0.05)
        yield StorescpPacs(out_dir, proc, port)
    finally:
        proc.kill()
        proc.wait()


def receiver_pacs(out_dir: Path) -> AbstractContextManager[Pacs]:
    """The in-process pynetdicom PACS (shares the GIL with the node)."""
    return Receiver(out_dir, ae_title="BENCHPACS")


@dataclass(frozen=True)
class Peers:
    """The modality and the PACS around the node."""

    name: str
    description: str
    send: Callable[[list[Path], int], float]
    pacs: Callable[[Path], AbstractContextManager[Pacs]]


PEERS = {
    "dcmtk": Peers(
        "dcmtk",
        "DCMTK storescu (a process per study) -> node -> storescp --fork, TCP_NODELAY=1",
        send_study_storescu,
        storescp_pacs,
    ),
    "pynetdicom": Peers(
        "pynetdicom",
        "pynetdicom SCU -> node -> pynetdicom Receiver, all in the benchmark process",
        send_study,
        receiver_pacs,
    ),
}


def default_peers() -> str:
    """dcmtk where storescu and storescp are on PATH, else pynetdicom (with a note)."""
    if shutil.which("storescu") and shutil.which("storescp"):
        return "dcmtk"
    print("note: storescu/storescp not on PATH (apt-get install dcmtk): peers are pynetdicom, in-process")
    return "pynetdicom"


@dataclass
class Run:
    """One node's studies: the seconds from last response to SR, and the node's SQL timestamps."""

    label: str
    seconds: list[float]
    phases: dict[str, list[float]]
    #: seconds from the first study's last response to the last study's, and to the last SR
    spans: tuple[float, float] = (0.0, 0.0)


def _epoch(value: datetime | None) -> float | None:
    v = as_utc(value)
    return None if v is None else v.timestamp()


def _phases(node: Node, sent: dict[str, float], sr_at: dict[str, float]) -> dict[str, list[float]]:
    """Per study: response -> handed to the runner -> analysis started -> preprocessed ->
    inferred -> results built -> SR stored at the PACS, from the node's own SQL stamps."""
    assert node.store is not None
    out: dict[str, list[float]] = {}
    with node.store.session() as s:
        rows = s.execute(
            select(Study.study_uid, Analysis).join(Analysis, Analysis.study_id == Study.id)
        ).all()
    for uid, a in rows:
        if uid not in sent or uid not in sr_at:
            continue
        marks = [
            ("response -> complete, queued", sent[uid]),
            ("queued -> analysis started", _epoch(a.queued_at)),
            ("started -> preprocessed", _epoch(a.started_at)),
            ("preprocessed -> inferred", _epoch(a.preprocessed_at)),
            ("inferred -> SR and SC built", _epoch(a.inferred_at)),
            ("built -> SR stored at the PACS", _epoch(a.results_built_at)),
            ("", sr_at[uid]),
        ]
        for (name, t0), (_, t1) in zip(marks, marks[1:], strict=False):
            if t0 is not None and t1 is not None:
                out.setdefault(name, []).append(t1 - t0)
    return out


def run_node(
    label: str,
    root: Path,
    model: Path,
    studies: list[PhantomStudy],
    gap: float,
    peers: Peers,
    **overrides: object,
) -> Run:
    """A fresh node (default settings but ``overrides``) between ``peers``, a warm-up study, then
    ``studies[1:]`` ``gap`` seconds apart (0: back to back)."""
    with peers.pacs(root / "pacs") as pacs:
        settings = Settings(
            host="127.0.0.1",
            port=0,
            storage_dir=root / "node",
            model=model,
            destinations=(Destination("BENCHPACS", "127.0.0.1", pacs.port),),
        ).with_overrides(**overrides)
        node = Node(settings, make_runner).start()
        try:
            warm, rest = studies[0], studies[1:]
            peers.send(warm.paths, node.port)
            pacs.wait_for(2, timeout=settings.quiet_seconds + 120)  # SR and SC
            sent: dict[str, float] = {}
            for s in rest:
                sent[s.study_uid] = peers.send(s.paths, node.port)
                if gap:
                    time.sleep(gap)
            got = pacs.wait_for(2 * len(studies), timeout=settings.quiet_seconds + 60 + 5 * len(rest))
            sr_at = {r.study_uid: r.at for r in got if r.sop_class_uid.startswith(SR_PREFIX)}
            phases = _phases(node, sent, sr_at)
        finally:
            node.stop()
    missing = [u for u in sent if u not in sr_at]
    if missing:
        print(f"{label}: {len(missing)} of {len(sent)} studies without an SR at the PACS")
    t0 = min(sent.values(), default=0.0)  # the first study's last response
    spans = (
        max(sent.values(), default=t0) - t0,
        max((sr_at[u] for u in sent if u in sr_at), default=t0) - t0,
    )
    return Run(label, sorted(sr_at[u] - sent[u] for u in sent if u in sr_at), phases, spans)


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``xs`` (nearest rank)."""
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def print_phases(phases: dict[str, list[float]]) -> None:
    """The table of where the time went: p50 and p95 of each phase."""
    print(f"{'phase':<34} {'p50 s':>7} {'p95 s':>7}")
    print("-" * 50)
    for name, xs in phases.items():
        xs = sorted(xs)
        print(f"{name:<34} {pct(xs, 0.5):>7.3f} {pct(xs, 0.95):>7.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=20, help="studies per mode (plus one warm-up)")
    ap.add_argument("--gap", type=float, default=1.5, help="seconds between studies")
    ap.add_argument("--size", type=int, default=2048, help="phantom rows and columns")
    ap.add_argument("--burst", type=int, default=0, help="also push this many studies back to back")
    ap.add_argument("--model", type=Path, default=Path("dicomnode-data/models/pneumonia-demo.onnx"))
    ap.add_argument(
        "--peers",
        choices=sorted(PEERS),
        default=None,
        help="modality and PACS: dcmtk (storescu/storescp processes; default when on PATH) or pynetdicom (in-process)",
    )
    args = ap.parse_args()
    peers = PEERS[args.peers or default_peers()]
    configure_logging("warning")
    model = ensure_demo_model(args.model)
    defaults = Settings()

    with tempfile.TemporaryDirectory(prefix="dicomnode-notify-") as tmp:
        root = Path(tmp)
        studies = write_phantom_studies(root / "in", args.studies + 1, seed=16, size=args.size)
        mb = studies[0].paths[0].stat().st_size / 1e6
        runs = [
            run_node("completion on release", root / "release", model, studies, args.gap, peers),
            run_node(
                "quiet period only (reference)",
                root / "quiet",
                model,
                studies,
                args.gap,
                peers,
                release_grace_seconds=0.0,
            ),
        ]
        burst: Run | None = None
        if args.burst:
            many = write_phantom_studies(root / "burst-in", args.burst + 1, seed=17, size=args.size)
            burst = run_node(f"burst of {args.burst}", root / "burst", model, many, 0.0, peers)

    print(
        f"\ntime to notification: last C-STORE response at the sender -> SR stored at the PACS\n"
        f"{args.studies} studies per mode, one DX image each ({args.size} x {args.size}, {mb:.1f} MB), one "
        f"association each, {args.gap} s apart; node defaults: quiet {defaults.quiet_seconds:g} s, release grace "
        f"{defaults.release_grace_seconds:g} s, in-process analysis, SQLite, fsync\n"
        f"peers: {peers.description}"
    )
    print(f"{'mode':<34} {'studies':>7} {'p50 s':>7} {'p95 s':>7} {'max s':>7}")
    print("-" * 66)
    for r in runs:
        if r.seconds:
            print(
                f"{r.label:<34} {len(r.seconds):>7d} {pct(r.seconds, 0.5):>7.2f} {pct(r.seconds, 0.95):>7.2f} {max(r.seconds):>7.2f}"
            )
    fast, ref = runs
    if fast.seconds and ref.seconds:
        print(
            f"{'reference / completion on release':<34} {'':>7} {pct(ref.seconds, 0.5) / pct(fast.seconds, 0.5):>6.1f}x "
            f"{pct(ref.seconds, 0.95) / pct(fast.seconds, 0.95):>6.1f}x"
        )
    print("goal (issue 16): p50 <= 1.0 s, p95 <= 1.5 s with completion on release\n")
    print(
        f"where the time goes, completion on release (from the node's SQL stamps), {len(fast.seconds)} studies"
    )
    print_phases(fast.phases)
    if burst is not None and burst.seconds:
        limit = defaults.quiet_seconds + 3
        print(f"\n{burst.label} studies back to back, one analysis thread, node defaults")
        print(f"{'p50 s':>7} {'p95 s':>7} {'max s':>7} {'mean s':>7}  limit p95 <= quiet + 3 s = {limit:g} s")
        s = burst.seconds
        print(
            f"{pct(s, 0.5):>7.2f} {pct(s, 0.95):>7.2f} {max(s):>7.2f} {statistics.mean(s):>7.2f}  {'met' if pct(s, 0.95) <= limit else 'NOT met'}"
        )
        sending, results = burst.spans
        n = len(s)
        print(
            f"studies sent in {sending:.1f} s ({(n - 1) / sending if sending else 0:.1f}/s); their SRs stored "
            f"within {results:.1f} s of the first study's last response ({n / results if results else 0:.1f} studies/s)"
        )
        print_phases(burst.phases)


if __name__ == "__main__":
    main()
