"""A study analysed with the decoding child gives the same results as one decoded in the worker.

The child keeps the heatmap's radiograph as 8-bit gray levels (dicomnode.model.decode.gray_levels)
and draws, builds and encodes the heatmap SC itself (dicomnode.results.sc.heatmap_sc_file): the
SC's pixels and the score must be the same bytes and the same number either way, for a radiograph
the SC shrinks, one it keeps and one it enlarges. Both processes run numpy's BLAS on one thread.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from threadpoolctl import threadpool_info

from dicomnode.config import Settings
from dicomnode.model import PneumoniaModel
from dicomnode.store.db import Store
from dicomnode.testing.phantoms import make_phantom
from tests.support import store_complete_study
from tests.tiny_model import tiny_card, write_tiny_model
from worker.pipeline import Pipeline

pytestmark = pytest.mark.process  # one pipeline decodes in a child process


def _pipeline(root: Path, model: Path, **changes: object) -> Pipeline:
    settings = Settings(storage_dir=root, model=model).with_overrides(**changes)
    return Pipeline(settings, Store(settings.effective_database_url), PneumoniaModel(settings.model_path))


def test_the_child_and_this_process_give_the_same_sc_pixels_and_score(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.onnx", tiny_card(threshold=0.5))
    child = _pipeline(tmp_path / "child", model)
    here = _pipeline(tmp_path / "here", model, decode_memory_bytes=0)
    assert child.decoder.isolated and not here.decoder.isolated
    try:
        for seed, positive, size in ((1, True, 1500), (2, False, 600), (3, True, 100)):
            ds = make_phantom(np.random.default_rng(seed), positive, size=size)
            a = child.analyse_study(store_complete_study(child, ds))
            b = here.analyse_study(store_complete_study(here, ds))
            assert a.score is not None and a.score == b.score, size
            sc_a, sc_b = (pydicom.dcmread(o.result_paths[1]) for o in (a, b))
            assert (sc_a.Rows, sc_a.Columns) == (sc_b.Rows, sc_b.Columns)
            assert sc_a.PixelData == sc_b.PixelData, size
    finally:
        child.close()
        here.close()


def _blas_threads(info: list[dict[str, object]]) -> list[object]:
    return [lib["num_threads"] for lib in info if lib.get("user_api") == "blas"]


def test_the_worker_and_its_decoding_child_run_blas_on_one_thread(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.onnx", tiny_card(threshold=0.5))
    child = _pipeline(tmp_path / "child", model)
    try:
        outcome = child.analyse_study(
            store_complete_study(child, make_phantom(np.random.default_rng(4), True, size=300))
        )
        assert outcome.result_paths
        assert child.decoder.call(os.getpid) != os.getpid()  # the call ran in the child
        here, there = _blas_threads(threadpool_info()), _blas_threads(child.decoder.call(threadpool_info))
        assert here and set(here) == {1}
        assert there and set(there) == {1}
    finally:
        child.close()


def test_the_smallest_decode_budget_still_draws_the_heatmap(tmp_path: Path) -> None:
    # highdicom's tables (about 100 MB once parsed) load before the child's cap, not out of it
    model = write_tiny_model(tmp_path / "tiny.onnx", tiny_card(threshold=0.5))
    small = _pipeline(tmp_path / "small", model, decode_memory_bytes=64 << 20)
    try:
        outcome = small.analyse_study(
            store_complete_study(small, make_phantom(np.random.default_rng(5), True, size=256))
        )
        assert outcome.reason is None and len(outcome.result_paths) == 2
        sc = pydicom.dcmread(outcome.result_paths[1])
        assert sc.Modality == "OT" and sc.SamplesPerPixel == 3
    finally:
        small.close()
