"""Exit statuses of ``dicomnode`` and the error a command raises to end with one line, no traceback.

An operator's mistake (a port in use, a missing database, a peer that refuses us) ends the command
with ``dicomnode: <what happened>; <what to do>`` on stderr and one of these statuses; only a bug
in dicomnode itself still prints a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
#: The command ran but its work failed: a file not stored, a study not delivered, a peer refused.
EXIT_FAILED = 1
#: Usage or set-up: bad arguments or settings, no database, a port in use, storage held by another node.
EXIT_USAGE = 2
#: Ctrl-C (128 + SIGINT, as the shell reports it).
EXIT_INTERRUPTED = 130
#: The reader of our output went away (``dicomnode results | head``): 128 + SIGPIPE, as for ``cat``.
EXIT_BROKEN_PIPE = 141


class CommandError(Exception):
    """Ends a command with its message on stderr and ``exit_code``; the message names the cause
    and the fix."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
]
