"""One BLAS thread per process for the worker's numpy.

numpy's OpenBLAS starts a thread per core and, after each call, keeps those threads spinning for
the next one. The worker's only BLAS calls are products of 7 x 7 class-activation maps, far too
small to share out; the spinning threads burned more CPU per study than the whole analysis, on
the cores the SCP, the decoding process and delivery need (docs/sizing.md, "BLAS threads").
threadpoolctl sets the limit in the loaded library, whenever numpy was imported.
"""

from __future__ import annotations

import threading

from threadpoolctl import threadpool_limits

__all__ = ["single_blas_thread"]

_lock = threading.Lock()
_done = False


def single_blas_thread() -> None:
    """Limit the BLAS libraries loaded in this process to one thread (once per process)."""
    global _done
    with _lock:
        if not _done:
            threadpool_limits(limits=1, user_api="blas")
            _done = True
