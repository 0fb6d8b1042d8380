"""A pause of pynetdicom's association thread that holds only once the thread has stopped.

pynetdicom's ``send_*`` methods and ``release()`` pause the association's own thread (the
"reactor", which serves what the peer sends) before they send a request and read its answer:
they clear ``Association._reactor_checkpoint`` and wait for ``Association._is_paused``. That flag
is still True from the reactor's previous pause when the checkpoint was set again a moment ago
(the previous send, or a kept-open association taken out of the pool) and the woken reactor has
not run yet. The next send then finds the reactor "paused", sends, and the reactor, running at
last, may take the answer off the DIMSE queue itself (pynetdicom logs "Received unexpected
C-STORE service message"). The send waits out its DIMSE timeout and aborts the association, so
the study's result is late by that timeout plus a retry: on a kept-open association, where the SR
and the heatmap SC go out back to back, a few studies in a thousand under load.

:class:`ReactorCheckpoint` replaces pynetdicom's event on every association this process makes
(:func:`install`, called by the DUL thread before the association is negotiated): ``clear()``
returns once the reactor has come back to its checkpoint after the clear, so the flag pynetdicom
reads next is the reactor's answer to this pause. ``set()`` and ``wait()`` behave as before.
"""

from __future__ import annotations

import threading

from pynetdicom.association import Association

#: How often a pausing thread looks whether the association's thread is still running.
_ALIVE_CHECK_SECONDS = 0.01


class ReactorCheckpoint(threading.Event):
    """``Association._reactor_checkpoint`` whose ``clear()`` waits for the reactor to stop."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self._assoc = assoc
        self._parked = threading.Event()  # the reactor waits here since the last clear()
        super().set()

    def set(self) -> None:
        self._parked.clear()
        super().set()

    def wait(self, timeout: float | None = None) -> bool:
        # only the association's own thread waits on its checkpoint
        if not self.is_set():
            self._parked.set()
        return super().wait(timeout)

    def clear(self) -> None:
        super().clear()
        if threading.current_thread() is self._assoc:  # the reactor pausing itself (a timeout)
            return
        while not self._parked.wait(_ALIVE_CHECK_SECONDS):
            if not self._assoc.is_alive():  # not started yet, or ended: nothing runs to stop
                return


def install(assoc: Association) -> None:
    """Give ``assoc`` a :class:`ReactorCheckpoint`; before its thread runs, while nothing waits on
    or pauses the old one."""
    assoc._reactor_checkpoint = ReactorCheckpoint(assoc)


__all__ = ["ReactorCheckpoint", "install"]
