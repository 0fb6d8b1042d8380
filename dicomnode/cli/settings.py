"""The settings a command runs with: the config file, the environment, then the command's own
``--storage-dir`` and ``--port``."""

from __future__ import annotations

import argparse
from pathlib import Path

from dicomnode.config import Settings, load_settings


def settings(args: argparse.Namespace) -> Settings:
    """``load_settings(--config)`` with the command's ``--storage-dir`` and ``--port`` applied."""
    s = load_settings(args.config)
    overrides = {}
    if getattr(args, "storage_dir", None):
        overrides["storage_dir"] = Path(args.storage_dir)
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    return s.with_overrides(**overrides) if overrides else s
