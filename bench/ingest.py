"""Ingest benchmark: our SCP against DCMTK storescp, both fed by DCMTK storescu, same files, one run.

    .venv/bin/python bench/ingest.py                 # 200 CT 512x512 + 50 DX 2048x2048, 7 repetitions
    .venv/bin/python bench/ingest.py --reps 5 --profile
    .venv/bin/python bench/ingest.py --reps 5 --senders 4 --group-commit   # 4 associations at once

The workload is generated once (CT built with pydicom, DX with dicomnode.testing.phantoms.make_phantom) into
``--workload`` and reused. Each repetition starts every receiver fresh on an empty folder (order
rotated per repetition, ``sync`` before each push so nobody pays for another's dirty pages), times
``storescu +sd`` from start to exit, and checks that every file arrived. With ``--senders N``, N
storescu run at once, each with its own association and every N-th file, timed from the first
start to the last exit. TCP_NODELAY=1 is set for every DCMTK tool (DCMTK 3.6.7 leaves Nagle on
otherwise). The node is started with a tiny model (``serve`` will not start without one) and no
study completes during the run (quiet period one hour, no completion on release). Receivers:

- ``storescp``: DCMTK, writes each file, no fsync (its default).
- ``dicomnode``: ``python -m dicomnode serve`` as shipped: the data set streamed into a file on the
  storage filesystem, fsync of file and folder, then Success; the SQL row follows within ~20 ms
  (``dicomnode.receive.recorder``) and the SHA-256 once the sender is quiet (``dicomnode.receive.fingerprint``).
- ``dicomnode fsync=off``: the same without the two fsyncs (DICOMNODE_FSYNC=false), to show what
  durability costs on this disk.
- ``dicomnode group commit`` (``--group-commit``): the associations share their flushes through a
  :class:`dicomnode.storage.GroupCommit` instead of each fsyncing on its own thread; the table's
  flushes/img column counts them (from the ``store.flushes`` line the node logs at exit).

The table gives the median of the repetitions and, because storescp's times on a small VM are
bimodal (0.5 s or 0.9-1.4 s for the same push), the best run of each receiver against the best
of storescp as well.

``--profile`` samples the node with py-spy during one extra push and prints where its time goes.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")
N_CT, N_DX = 200, 50
#: ``python -m dicomnode`` with the C-STORE handler given a :class:`dicomnode.storage.GroupCommit`
#: (associations share flushes in user space), for ``--group-commit``
# --------------------------------------------------------------------------------------------
# workload


def _ct(rng: np.random.Generator, study_uid: str, series_uid: str, i: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.PatientID, ds.PatientName = "CT", "BENCH001", "BENCH^CT"
    ds.InstanceNumber, ds.ImagePositionPatient = i + 1, [0, 0, float(i)]
    ds.ImageOrientationPatient, ds.PixelSpacing, ds.SliceThickness = [1, 0, 0, 0, 1, 0], [0.7, 0.7], 1.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = rng.integers(-1024, 2000, (512, 512), dtype=np.int16).tobytes()
    return ds


def _dx(args: tuple[int, Path]) -> None:
    from dicomnode.testing.phantoms import make_phantom

    seed, out = args
    ds = make_phantom(np.random.default_rng(seed), bool(seed % 2), size=2048)
    ds.save_as(out / f"dx{seed:03d}.dcm", enforce_file_format=True)


def ensure_workload(root: Path) -> Path:
    """The folder of 250 files, generated on first use (about a minute: the DX phantoms dominate)."""
    files, done = root / "files", root / "complete.txt"
    if not done.exists():
        shutil.rmtree(files, ignore_errors=True)
        (files / "ct").mkdir(parents=True)
        (files / "dx").mkdir()
        rng = np.random.default_rng(2024)
        study, series = generate_uid(), generate_uid()
        for i in range(N_CT):
            _ct(rng, study, series, i).save_as(files / "ct" / f"ct{i:03d}.dcm", enforce_file_format=True)
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(_dx, [(s, files / "dx") for s in range(N_DX)]))
        done.write_text(f"{N_CT} CT, {N_DX} DX\n")
    return files


# --------------------------------------------------------------------------------------------
# receivers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_echo(port: int, aec: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        r = subprocess.run(
            ["echoscu", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port)],
            env=DCMTK_ENV,
            capture_output=True,
        )
        if r.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"receiver on {port} not answering C-ECHO")


class Receiver:
    name: str
    aec: str

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def received(self) -> int:
        raise NotImplementedError

    def start(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        cmd, env = self.command()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(self.workdir / "stderr.log", "wb")
        )
        try:
            _wait_echo(self.port, self.aec, self.proc)
        except RuntimeError as exc:
            tail = (self.workdir / "stderr.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name}: {exc}; its stderr ends:\n{tail}") from exc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class StoreSCP(Receiver):
    name, aec = "storescp (DCMTK)", "STORESCP"

    def command(self) -> tuple[list[str], dict[str, str]]:
        out = self.workdir / "out"
        out.mkdir()
        return ["storescp", "-aet", self.aec, "-od", str(out), "+xa", str(self.port)], DCMTK_ENV

    def received(self) -> int:
        return sum(1 for p in (self.workdir / "out").iterdir() if p.is_file())


class DicomNode(Receiver):
    aec = "DICOMNODE"

    #: ``serve`` refuses to start without a model it can load; none runs during an ingest push
    model: Path | None = None

    def __init__(
        self,
        workdir: Path,
        *,
        fsync: bool = True,
        grouped: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.fsync = fsync
        self.grouped = grouped
        self.extra = extra or {}
        self.name = (
            "dicomnode"
            + ("" if fsync else " fsync=off")
            + (" group commit" if grouped else "")
            + "".join(f" {k}={v}" for k, v in self.extra.items())
        )

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
        env.update(
            DICOMNODE_HOST="127.0.0.1",
            DICOMNODE_PORT=str(self.port),
            DICOMNODE_STORAGE_DIR=str(self.workdir / "node"),
            # ingest only: no study completes (on release or quiet), nothing analysed during the push
            DICOMNODE_QUIET_SECONDS="3600",
            DICOMNODE_RELEASE_GRACE_SECONDS="0",
            DICOMNODE_LOG_LEVEL="info",  # per association, not per instance; the flush count at exit
            DICOMNODE_FSYNC="true" if self.fsync else "false",
            TCP_NODELAY="1",
        )
        if self.model is not None:
            env["DICOMNODE_MODEL"] = str(self.model)
        env.update({f"DICOMNODE_{k.upper()}": v for k, v in self.extra.items()})
        if self.grouped:
            env["DICOMNODE_GROUP_COMMIT"] = "true"
        return [sys.executable, "-m", "dicomnode", "serve"], env

    def received(self) -> int:
        return sum(1 for _ in (self.workdir / "node" / "instances").rglob("*.dcm"))

    def flushes(self) -> tuple[int, int] | None:
        """(flushes, fsync waits they covered) from the ``store.flushes`` line the node logs at
        shutdown; None with fsync off."""
        found = re.search(
            r"store\.flushes\s.*?flushes=(\d+).*?writes=(\d+)", (self.workdir / "stderr.log").read_text()
        )
        return (int(found[1]), int(found[2])) if found else None


def push(receiver: Receiver, workload: Path, senders: int = 1) -> float:
    """Seconds for storescu to send the whole folder: one association, or ``senders`` storescu
    processes at once, each with its own association and every ``senders``-th file (CT and DX
    alike), timed from the first start to the last exit."""
    cmd = ["storescu", "-aet", "BENCH", "-aec", receiver.aec, "127.0.0.1", str(receiver.port)]
    if senders == 1:
        shares = [["+sd", str(workload), "+r"]]
    else:
        files = [str(p) for p in sorted(workload.rglob("*.dcm"))]
        shares = [files[i::senders] for i in range(senders)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd + share, env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for share in shares
    ]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - t0
    for p, err in zip(procs, errors, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"storescu -> {receiver.name} failed: {err[-2000:]}")
    return elapsed


# --------------------------------------------------------------------------------------------
# profile


def profile(receiver: DicomNode, workload: Path, out: Path) -> None:
    """py-spy samples the running node during one push; prints the hottest frames."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("\n(py-spy not installed: pip install py-spy to profile)")
        return
    receiver.start()
    assert receiver.proc is not None
    raw = out / "node.pyspy.txt"
    rec = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(receiver.proc.pid),
            "--rate",
            "250",
            "--format",
            "raw",
            "--idle",
            "-o",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        push(receiver, workload)
    finally:
        rec.send_signal(2)
        rec.wait(30)
        receiver.stop()
    if not raw.exists():
        print("\n(py-spy could not attach: ptrace not permitted here?)")
        return
    # The listener serves each association on one thread: socket reads, file writes, our handler.
    kinds = {"association thread": "Association.run (dicomnode/net/association.py"}
    leaf: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in kinds}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        for kind, marker in kinds.items():
            if any(marker in f for f in frames):
                leaf[kind][frames[-1]] += int(n)
                break
    for kind, counter in leaf.items():
        total = sum(counter.values())
        if not total:
            continue
        print(f"\npy-spy, node {kind} during one push ({total} samples at 250 Hz, idle included):")
        for f, n in counter.most_common(12):
            print(f"  {100 * n / total:5.1f}%  {f[:110]}")
    print(f"(raw stacks: {Path(tempfile.gettempdir()) / 'dicomnode-ingest.pyspy.txt'})")


# --------------------------------------------------------------------------------------------


def run_table(label: str, folder: Path, receivers: list[Receiver], reps: int, senders: int = 1) -> None:
    """Push ``folder`` to every receiver ``reps`` times (interleaved) and print the medians."""
    files = sorted(folder.rglob("*.dcm"))
    total_bytes = sum(p.stat().st_size for p in files)
    how = "one association" if senders == 1 else f"{senders} storescu at once, one association each"
    print(f"\n[{label}] {len(files)} files, {total_bytes / 1e6:.0f} MB, {how}")
    times: dict[str, list[float]] = {r.name: [] for r in receivers}
    flushes: dict[str, list[tuple[int, int]]] = {r.name: [] for r in receivers}
    for rep in range(reps):
        order = receivers[rep % len(receivers) :] + receivers[: rep % len(receivers)]
        for r in order:  # interleaved and rotated, so drift on the machine hits every receiver alike
            r.start()
            os.sync()  # no receiver pays for the dirty pages the previous one left behind
            try:
                times[r.name].append(push(r, folder, senders))
                time.sleep(0.5)  # let the last write settle before counting
                got = r.received()
            finally:
                r.stop()
            if got != len(files):
                sys.exit(f"{r.name}: received {got} of {len(files)} files")
            counted = r.flushes() if isinstance(r, DicomNode) else None
            if counted is not None:
                flushes[r.name].append(counted)
            note = f"  {counted[0]} flushes for {counted[1]} fsync waits" if counted else ""
            print(f"  rep {rep + 1}: {r.name:<24} {times[r.name][-1]:6.2f} s{note}", flush=True)
    base = statistics.median(times[receivers[0].name])
    base_best = min(times[receivers[0].name])
    print(
        f"{'receiver':<26} {'median s':>9} {'images/s':>9} {'MB/s':>8} {'vs storescp':>12} "
        f"{'best s':>7} {'best vs best':>13} {'flushes/img':>12}   runs (s)"
    )
    print("-" * 123)
    for r in receivers:
        med, best = statistics.median(times[r.name]), min(times[r.name])
        runs = " ".join(f"{t:.2f}" for t in times[r.name])
        counts = flushes[r.name]
        per_image = f"{sum(f for f, _ in counts) / (len(counts) * len(files)):.2f}" if counts else "-"
        print(
            f"{r.name:<26} {med:>9.2f} {len(files) / med:>9.1f} {total_bytes / 1e6 / med:>8.1f} "
            f"{base / med:>11.2f}x {best:>7.2f} {base_best / best:>12.2f}x {per_image:>12}   {runs}"
        )
    print(
        "storescp answers Success once the file is in the page cache (no fsync): after a power cut"
        " it may be empty or missing.\ndicomnode answers after fsync of the data, rename, fsync of"
        " the folder (2 fsyncs per image, each association on its own thread); with group commit the"
        " associations share flushes (flushes/img)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument(
        "--workload", type=Path, default=Path(tempfile.gettempdir()) / "dicomnode-ingest-workload"
    )
    ap.add_argument("--no-nosync", action="store_true", help="skip the fsync=off variant")
    ap.add_argument("--profile", action="store_true", help="py-spy the node during one extra push")
    ap.add_argument("--split", action="store_true", help="also time the CT and the DX halves on their own")
    ap.add_argument(
        "--group-commit",
        action="store_true",
        help="also the node with user-space group commit (dicomnode.storage.GroupCommit), for comparison",
    )
    ap.add_argument(
        "--senders",
        type=int,
        default=1,
        help="storescu processes pushing at once, each its own association and share of the files",
    )
    args = ap.parse_args()
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: install DCMTK (apt-get install dcmtk)")

    workload = ensure_workload(args.workload)
    sys.path.insert(0, str(REPO))  # tests.tiny_model: a real ONNX model built without torch
    from tests.tiny_model import write_tiny_model

    DicomNode.model = write_tiny_model(args.workload / "tiny.onnx")
    print(
        f"workload: {N_CT} CT 512x512 + {N_DX} DX 2048x2048 in {workload}; storescu, TCP_NODELAY=1, "
        f"{args.senders} sender(s)"
    )

    with tempfile.TemporaryDirectory(prefix="dicomnode-ingest-") as tmp:
        work = Path(tmp)
        receivers: list[Receiver] = [StoreSCP(work / "storescp"), DicomNode(work / "node")]
        if args.group_commit:
            receivers.append(DicomNode(work / "node-grouped", grouped=True))
        if not args.no_nosync:
            receivers.append(DicomNode(work / "node-nosync", fsync=False))
        parts = [("all", workload)]
        if args.split:
            parts += [("CT only", workload / "ct"), ("DX only", workload / "dx")]
        for label, folder in parts:
            run_table(label, folder, receivers, args.reps, args.senders)
        if args.profile:
            profile(DicomNode(work / "node-profile"), workload, work)
            if (work / "node.pyspy.txt").exists():
                shutil.copy(
                    work / "node.pyspy.txt", Path(tempfile.gettempdir()) / "dicomnode-ingest.pyspy.txt"
                )


if __name__ == "__main__":
    main()
