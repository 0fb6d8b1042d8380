"""Progress events on stdout, ``event key=value ...``: what training, evaluation and the benchmarks
print while they run. Torch-free, so the torch-free commands use it too."""

from __future__ import annotations

from typing import Any


def log_event(event: str, **fields: Any) -> None:
    """Default progress logger: ``event key=value ...`` on stdout (floats to 4 significant digits)."""
    parts = [event] + [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()]
    print(" ".join(parts), flush=True)


__all__ = ["log_event"]
