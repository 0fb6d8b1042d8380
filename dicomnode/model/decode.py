"""Decoding pixel data within bounds: a size check on the header, then a memory-limited child.

A DICOM header may claim any image size (Rows and Columns go up to 65535, a compressed or
deflated data set of a few hundred KiB can expand to gigabytes), and a decoder is C code that
hostile input can crash. So the worker decodes in two steps:

1. :func:`check_decode_bounds`: Rows x Columns x SamplesPerPixel x NumberOfFrames from the header,
   refused above ``DICOMNODE_MAX_IMAGE_PIXELS`` before any byte is decoded (:class:`ImageTooLarge`);
2. :class:`Decoder`: reading the file in full, decoding and preprocessing up to the model tensor
   run in a long-lived child process whose address space is capped (``RLIMIT_AS``) at its idle
   size plus ``DICOMNODE_DECODE_MEMORY_BYTES``. A decode past the cap gets a ``MemoryError`` in the
   child, a decoder crash kills the child, a hang is stopped after ``DICOMNODE_DECODE_TIMEOUT_SECONDS``;
   each becomes a :class:`DecodeFailed` naming the setting, the child is replaced, and the worker
   (or the node, in embedded mode) goes on with the next study.

Only the float32 model tensor comes back per instance, and, for the image the heatmap is drawn on,
the radiograph at the heatmap's resolution (:func:`~dicomnode.model.preprocess.display_image_of`)
as the 8-bit gray levels the heatmap's blend is indexed by (:func:`gray_levels`: 1 MiB at 1024 x
1024, not the 8 MiB of the float image), so a large radiograph is never held in full by the
worker. A deflated data set, which has no file offsets to defer its pixel data to, is read in the
child too (:meth:`Decoder.header`), with the reader the worker gives (its inflation capped by
``DICOMNODE_MAX_INFLATED_BYTES``), so the worker never holds it inflated.
``DICOMNODE_DECODE_MEMORY_BYTES=0`` runs the same functions in the calling process, for debugging.

The child is started with the forkserver method: like any multiprocessing user, a script that
analyses studies must guard its top level with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import select
import signal
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicomnode.model.preprocess import (
    DisplayImage,
    PreprocessConfig,
    display_image_of,
    finish_unit_image,
    to_unit_image,
)
from dicomnode.model.threads import single_blas_thread

T = TypeVar("T")

MIB = 1 << 20

#: A child decodes this many instances, then a fresh one takes over (keeps heap growth bounded).
RECYCLE_AFTER = 200

#: Seconds a new decoding process may take to start (the first one starts the forkserver).
_START_TIMEOUT = 120.0

#: Displays (<= 1 MiB each at the heatmap's 1024 pixels) the child keeps for the heatmap request
#: that follows the study's decodes; a miss decodes the file again.
_DISPLAY_CACHE_SIZE = 4


class ImageRefused(ValueError):
    """The header's image size is missing, not a number or over the limit: the image is not decoded."""


class ImageTooLarge(ImageRefused):
    """The header describes an image larger than ``DICOMNODE_MAX_IMAGE_PIXELS``; nothing was decoded."""


class DecodeError(ValueError):
    """Decoding or preprocessing raised in the child; ``kind`` is the original exception's type name.

    The child sends this instead of the original exception: decoder exceptions do not always pickle.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (DecodeError, (self.kind, str(self)))


class DecodeFailed(RuntimeError):
    """Decoding ran out of memory, crashed its process or took too long: a resource failure.

    The message says what happened and which setting to change; it quotes no header value.
    """


@dataclass(frozen=True)
class DecodeLimits:
    """The bounds a :class:`Decoder` enforces (settings ``DICOMNODE_MAX_IMAGE_PIXELS``,
    ``DICOMNODE_DECODE_MEMORY_BYTES``, ``DICOMNODE_DECODE_TIMEOUT_SECONDS``)."""

    #: largest Rows x Columns x SamplesPerPixel x NumberOfFrames decoded; 0: no limit
    max_pixels: int = 50_000_000
    #: address space a decode may add to its child process; 0: decode in the calling process
    memory_bytes: int = 2 << 30
    #: a decode running longer is stopped (its child killed); only enforced with a child
    timeout_seconds: float = 120.0
    #: the child logs (pydicom's warnings, say) as the worker does: same level, same format
    log_level: str = "info"
    log_format: str = "console"

    @classmethod
    def from_settings(cls, settings: Any) -> DecodeLimits:
        """The limits of a :class:`dicomnode.config.Settings`."""
        return cls(
            max_pixels=settings.max_image_pixels,
            memory_bytes=settings.decode_memory_bytes,
            timeout_seconds=settings.decode_timeout_seconds,
            log_level=settings.log_level,
            log_format=settings.log_format,
        )


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise ImageRefused(
                f"the header has no {keyword}: the image size is unknown, so it is not decoded"
            )
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageRefused(
            f"the header's {keyword} is not a number: the image size is unknown, so it is not decoded"
        ) from None


def image_pixels(ds: Dataset) -> int:
    """Rows x Columns x SamplesPerPixel x NumberOfFrames as the header states them (no decoding).

    Raises :class:`ImageRefused` when Rows or Columns is missing or any of them is not a number.
    """
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    samples = _int(ds, "SamplesPerPixel", 1)
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if min(rows, cols, samples, frames) < 0:
        raise ImageRefused("the header gives a negative image size: the image is not decoded")
    return rows * cols * samples * frames


def check_decode_bounds(ds: Dataset, max_pixels: int) -> None:
    """Raise :class:`ImageTooLarge` if the header's image is over ``max_pixels`` (0: no limit).

    Reads Rows, Columns, SamplesPerPixel and NumberOfFrames only: call it before ``pixel_array``.
    The message quotes the size, never a patient attribute.
    """
    pixels = image_pixels(ds)
    if max_pixels and pixels > max_pixels:
        frames = _int(ds, "NumberOfFrames", 1) or 1
        samples = _int(ds, "SamplesPerPixel", 1)
        raise ImageTooLarge(
            f"image too large to decode: {int(ds.Rows)} x {int(ds.Columns)} pixels, {frames} frame(s), "
            f"{samples} sample(s) per pixel = {pixels / 1e6:.1f} megapixels, over "
            f"DICOMNODE_MAX_IMAGE_PIXELS={max_pixels} ({max_pixels / 1e6:.1f} megapixels); raise it "
            "only if such images are expected (decoding needs about 25 bytes per pixel)"
        )


# --- what runs in the child (or in the calling process with memory_bytes=0) -------------------


def gray_levels(unit: np.ndarray) -> np.ndarray:
    """``unit`` (a [0, 1] image) as uint8 gray levels: ``round(255 * unit)``, clipped to 0..255.

    The heatmap's blend table is indexed by these levels
    (:func:`dicomnode.results.render.render_heatmap`), so the display sent back from the child in
    this form draws the same pixels as the float image, at an eighth of the bytes through the pipe.
    """
    level = np.multiply(unit, 255.0)
    np.clip(level, 0.0, 255.0, out=level)
    return np.rint(level, out=level).astype(np.uint8)


_displays: OrderedDict[tuple[Any, ...], DisplayImage] = OrderedDict()


def _file_key(path: str, config: PreprocessConfig, max_side: int) -> tuple[Any, ...]:
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns, config, max_side)


#: How a file is read: ``pydicom.dcmread`` by default; the worker passes its bounded reader
#: (dicomnode.storage.read_instance with the inflation cap), picklable so it reaches the child.
Reader = Callable[[str], Dataset]


def _decode(
    reader: Reader, path: str, config: PreprocessConfig, max_pixels: int, max_side: int
) -> tuple[np.ndarray, DisplayImage]:
    ds = reader(path)
    check_decode_bounds(ds, max_pixels)  # again: the file is read here, whatever the caller saw
    unit = to_unit_image(ds, config)
    del ds  # the encoded pixel data
    display = display_image_of(unit, max_side)
    display = DisplayImage(gray_levels(display.pixels), display.source_shape)
    tensor = finish_unit_image(unit, config)
    return tensor, display


def _guard(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn``; any exception but MemoryError and ImageRefused becomes a picklable DecodeError."""
    try:
        return fn(*args)
    except (MemoryError, ImageRefused, DecodeError):
        raise
    except Exception as exc:
        if _caused_by_memory(exc):  # a decoder that wraps the allocation failure in its own type
            raise MemoryError(f"{type(exc).__name__} after running out of memory") from None
        raise DecodeError(type(exc).__name__, str(exc)) from None


def _caused_by_memory(exc: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, MemoryError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def decode_tensor(
    reader: Reader, path: str, config: PreprocessConfig, max_pixels: int, max_side: int
) -> np.ndarray:
    """Read ``path`` with ``reader``, check its size, decode and preprocess it: the model tensor.

    The display at ``max_side`` is kept for a following :func:`decode_display` of the same file.
    """

    def run() -> np.ndarray:
        tensor, display = _decode(reader, path, config, max_pixels, max_side)
        _displays[_file_key(path, config, max_side)] = display
        while len(_displays) > _DISPLAY_CACHE_SIZE:
            _displays.popitem(last=False)
        return tensor

    return _guard(run)


def decode_display(
    reader: Reader, path: str, config: PreprocessConfig, max_pixels: int, max_side: int
) -> DisplayImage:
    """The radiograph at ``path`` as the heatmap shows it, in :func:`gray_levels` (kept from
    :func:`decode_tensor`, or decoded)."""

    return _guard(cached_display, reader, path, config, max_pixels, max_side)


def cached_display(
    reader: Reader, path: str, config: PreprocessConfig, max_pixels: int, max_side: int
) -> DisplayImage:
    """:func:`decode_display` unguarded, for code that runs in the child through
    :meth:`Decoder.call` (the heatmap, drawn where its radiograph is)."""
    cached = _displays.get(_file_key(path, config, max_side))
    return cached if cached is not None else _decode(reader, path, config, max_pixels, max_side)[1]


def read_header(reader: Reader, path: str) -> Dataset:
    """The whole data set without its pixel data (which stays in the file: ``PixelData`` is b"").

    For deflated files, whose inflation pydicom does in one unbounded step: the :class:`Decoder`
    runs it in the child.
    """

    def run() -> Dataset:
        ds = reader(path)
        if "PixelData" in ds:
            ds.PixelData = b""  # present, as select() asks, but decoded from the file by the child
        return ds

    return _guard(run)


def _exit_with(pid: int) -> None:
    """End this process when process ``pid`` has ended (a thread of the decoding child).

    The child's parent is the forkserver, not the worker, and the forkserver lives as long as any
    process it started: so the child watches the worker itself, or a worker killed by the kernel
    or a Celery time limit would leave the child, and the forkserver, behind.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # no pidfd (not Linux 5.3+): ask every second
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
    select.select([fd], [], [])  # readable once the process has ended
    os._exit(0)


def _child_start(
    memory_bytes: int,
    worker_pid: int,
    log_level: str,
    log_format: str,
    warm: Callable[[], object] | None = None,
) -> None:
    """Initializer of the decoding child: die with the worker, log as it does (one JSON object a
    line, values redacted), load the decoders and run ``warm``, cap the memory."""
    from dicomnode.logconfig import configure_logging  # here: importing the model loads no structlog

    configure_logging(log_level, log_format)
    with contextlib.suppress(Exception):  # Linux: killed with its parent (forkserver or worker)
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    threading.Thread(target=_exit_with, args=(worker_pid,), daemon=True, name="watch-worker").start()
    # every pixel decoder loaded (by the forkserver, else here), so the cap measures an idle child
    # that is ready to decode
    single_blas_thread()
    for name in _DECODER_MODULES:
        with contextlib.suppress(Exception):
            __import__(name)
    if warm is not None:  # tables loaded once per child, not out of one image's budget
        try:
            warm()
        except Exception as exc:  # the first call that needs them loads them instead
            import structlog

            structlog.get_logger("model.decode").warning("decode.warm_up_failed", error=type(exc).__name__)
    idle = os.sysconf("SC_PAGE_SIZE") * int(Path("/proc/self/statm").read_text().split()[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = idle + memory_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


#: Imported once by the forkserver, so that each fresh child starts in milliseconds; missing
#: optional plugins are skipped.
_DECODER_MODULES = ("pydicom.pixels.decoders", "pylibjpeg", "libjpeg", "openjpeg", "rle")


def _ping() -> int:
    return os.getpid()


# --- the calling side ------------------------------------------------------------------------


def _mp_context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one (a fresh child in ~0.1 s, no threads inherited), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # "__main__": the server imports the parent's main module once, not every child
        ctx.set_forkserver_preload(["__main__", __name__, *_DECODER_MODULES])
        return ctx
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Let this process start the decoding child even inside a Celery prefork pool process.

    Celery's pool (billiard) runs tasks in daemon processes, which multiprocessing forbids to have
    children, so that none outlives them: ours cannot, it asks the kernel to kill it when its
    parent dies (``PR_SET_PDEATHSIG``) and its forkserver exits with the worker. Billiard also
    leaves its own authentication key in multiprocessing's process state, which multiprocessing
    refuses to send to a child; the child is given a key of its own (it connects to nothing that
    checks one). Both are put back once the child has started.
    """
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    saved = dict(config)
    config.pop("daemon", None)
    own = multiprocessing.process.AuthenticationString  # type: ignore[attr-defined]
    if type(config.get("authkey")) is not own:
        config["authkey"] = own(os.urandom(32))
    try:
        yield
    finally:
        config.clear()
        config.update(saved)


def _shutdown(executor: ProcessPoolExecutor) -> None:
    executor.shutdown(wait=False, cancel_futures=True)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the decoding process died"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the system's out-of-memory killer?)" if -code == signal.SIGKILL else ""
        return f"the decoding process was killed by {name}{hint}"
    return f"the decoding process exited with status {code}"


class Decoder:
    """Decodes instances within :class:`DecodeLimits`, in a memory-limited child process.

    One child at a time, started on first use and replaced after a failure or every
    :data:`RECYCLE_AFTER` decodes. Thread-safe (calls are serialised). Every failure of the child
    is raised as :class:`DecodeFailed`; :class:`ImageTooLarge` and :class:`DecodeError` say the
    image itself was refused or could not be decoded.
    """

    def __init__(
        self,
        limits: DecodeLimits | None = None,
        *,
        reader: Reader | None = None,
        warm: Callable[[], object] | None = None,
    ) -> None:
        self.limits = limits or DecodeLimits()
        self.reader: Reader = reader or pydicom.dcmread
        #: run in each new child before its memory is capped (picklable): loads what later calls
        #: through :meth:`call` need once per child, outside the per-image budget
        self.warm = warm
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._finalizer: Any = None
        self._calls = 0

    @property
    def isolated(self) -> bool:
        """True when decoding runs in a child process (``memory_bytes`` > 0)."""
        return self.limits.memory_bytes > 0

    def tensor(self, path: str | Path, config: PreprocessConfig, max_side: int) -> np.ndarray:
        """The model tensor of the file at ``path`` (float32 ``[1, size, size]``)."""
        return self._call(decode_tensor, self.reader, str(path), config, self.limits.max_pixels, max_side)

    def display(self, path: str | Path, config: PreprocessConfig, max_side: int) -> DisplayImage:
        """The heatmap's radiograph of the file at ``path`` as uint8 :func:`gray_levels` (after
        :meth:`tensor` of the same file)."""
        return self._call(decode_display, self.reader, str(path), config, self.limits.max_pixels, max_side)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` where this decoder decodes (the child, else this process), within its
        limits; ``fn`` and its arguments must pickle. For work that needs a decoded image and
        spares the worker's own process (the heatmap SC, :mod:`dicomnode.results.sc`)."""
        return self._call(fn, *args)

    def header(self, path: str | Path) -> Dataset:
        """The header of a deflated file (see :func:`read_header`), inflated within the bounds."""
        return self._call(read_header, self.reader, str(path))

    def start(self) -> None:
        """Start the child now rather than on the first decode (no-op without a child)."""
        if self.isolated:
            self._call(_ping)

    def close(self) -> None:
        """Stop the child and wait for it (a later call starts a new one)."""
        with self._lock:
            if self._executor is not None:  # waited for: its queues are released before an exit
                self._executor.shutdown(wait=True, cancel_futures=True)
            self._drop()

    def _drop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._executor, self._finalizer, self._calls = None, None, 0

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None or self._calls >= RECYCLE_AFTER:
            self._drop()
            executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=_mp_context(),
                initializer=_child_start,
                initargs=(
                    self.limits.memory_bytes,
                    os.getpid(),
                    self.limits.log_level,
                    self.limits.log_format,
                    self.warm,
                ),
            )
            self._executor = executor
            self._finalizer = weakref.finalize(self, _shutdown, executor)
            try:  # started before the first decode, so its timeout times the decode alone
                with _children_allowed():
                    executor.submit(_ping).result(timeout=_START_TIMEOUT)
            except Exception as exc:
                self._drop()
                raise DecodeFailed(
                    f"the decoding process could not start ({type(exc).__name__}); "
                    "DICOMNODE_DECODE_MEMORY_BYTES=0 decodes in the worker itself meanwhile"
                ) from exc
        return self._executor

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.isolated:
            try:
                return fn(*args)
            except MemoryError:
                raise DecodeFailed(
                    "the image could not be decoded: out of memory in the worker (decoding in the "
                    "worker's own process, DICOMNODE_DECODE_MEMORY_BYTES=0); set "
                    "DICOMNODE_DECODE_MEMORY_BYTES to decode in a memory-limited process"
                ) from None
        with self._lock:
            pool = self._pool()
            self._calls += 1
            try:
                future: Future[T] = pool.submit(fn, *args)
            except BrokenProcessPool:  # the idle child died (killed from outside): a fresh one
                self._drop()
                pool = self._pool()
                future = pool.submit(fn, *args)
            processes = list(getattr(pool, "_processes", {}).values())  # for the exit status
            try:
                return future.result(timeout=self.limits.timeout_seconds or None)
            except MemoryError:
                self._drop()  # a fresh child: the heap of this one may be fragmented
                raise DecodeFailed(self._too_large()) from None
            except BrokenProcessPool:
                for p in processes:
                    p.join(1.0)
                codes = [p.exitcode for p in processes if p.exitcode is not None]
                self._drop()
                what = _describe_exit(codes[0] if codes else None)
                if codes and codes[0] == -signal.SIGKILL:
                    raise DecodeFailed(f"{what}: {self._too_large()}") from None
                raise DecodeFailed(
                    f"{what} while decoding (a decoder fault on a malformed or hostile image); "
                    "the instance is not analysed"
                ) from None
            except FutureTimeout:
                for p in processes:
                    p.kill()
                self._drop()
                raise DecodeFailed(
                    f"decoding took longer than {self.limits.timeout_seconds:g} s "
                    "(DICOMNODE_DECODE_TIMEOUT_SECONDS) and was stopped; raise it if such images "
                    "are expected"
                ) from None

    def _too_large(self) -> str:
        mib = self.limits.memory_bytes // MIB
        return (
            f"image too large to decode within {mib} MiB (DICOMNODE_DECODE_MEMORY_BYTES); raise "
            "it if such images are expected, then send the study again, or lower "
            "DICOMNODE_MAX_IMAGE_PIXELS to refuse such images before decoding"
        )


__all__ = [
    "RECYCLE_AFTER",
    "DecodeError",
    "DecodeFailed",
    "DecodeLimits",
    "Decoder",
    "ImageRefused",
    "ImageTooLarge",
    "Reader",
    "cached_display",
    "check_decode_bounds",
    "decode_display",
    "decode_tensor",
    "gray_levels",
    "image_pixels",
    "read_header",
]
