"""``dicomnode train``: the training CLI (``python -m training``), loaded only when asked for."""

from __future__ import annotations


def cmd_train(argv: list[str]) -> int:
    """`dicomnode train ARGS` runs `python -m training train ARGS`; `dicomnode train
    {quantize,phantoms,card,demo-model} ARGS` the other training commands."""
    from training.__main__ import COMMANDS
    from training.__main__ import main as training_main

    if not argv or argv[0] not in COMMANDS:
        argv = ["train", *argv]
    return training_main(argv)
