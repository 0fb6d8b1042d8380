"""Decode bounds (issue 13 item 3), in this process: the header's image size is checked before any
byte is decoded, the pipeline records a refused instance with its reason, and the radiograph the
heatmap shows is the same whether it was shrunk where it was decoded or in the results builder.
The decoding child process itself is tested in tests/integration/test_pixel_bomb.py."""

from __future__ import annotations

import io
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.config import ConfigError, Settings, load_settings
from dicomnode.model import PneumoniaModel, PreprocessConfig, preprocess
from dicomnode.model.decode import (
    DecodeLimits,
    Decoder,
    ImageRefused,
    ImageTooLarge,
    check_decode_bounds,
    decode_tensor,
    gray_levels,
    image_pixels,
)
from dicomnode.model.preprocess import display_image_of, to_unit_image
from dicomnode.results.render import MAX_SIDE, render_heatmap
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.hostile import claimed_size_pixel_bomb, header_dataset
from dicomnode.testing.phantoms import make_phantom
from tests.support import store_complete_study
from tests.tiny_model import tiny_card, write_tiny_model
from worker.pipeline import Pipeline

MiB = 1 << 20


def _write(ds: pydicom.Dataset, path: Path) -> str:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return str(path)


def test_a_header_claiming_65535_squared_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _write(claimed_size_pixel_bomb(), tmp_path / "bomb.dcm")
    config = PreprocessConfig()

    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge, match=r"65535 x 65535 .*DICOMNODE_MAX_IMAGE_PIXELS"):
            decode_tensor(pydicom.dcmread, path, config, 50_000_000, MAX_SIDE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a decode would have allocated 4 GiB (8-bit) before finding the data short; the file is ~0.3 MiB
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB while refusing"


def test_image_pixels_counts_rows_columns_samples_and_frames() -> None:
    ds = header_dataset(rows=100, columns=200)
    assert image_pixels(ds) == 20_000
    ds.SamplesPerPixel, ds.NumberOfFrames = 3, 4
    assert image_pixels(ds) == 240_000
    check_decode_bounds(ds, 240_000)  # at the limit: allowed
    check_decode_bounds(ds, 0)  # 0: no limit
    with pytest.raises(ImageTooLarge, match="4 frame"):
        check_decode_bounds(ds, 239_999)


@pytest.mark.parametrize("value", [None, "", "lots"])
def test_a_header_without_a_readable_size_is_refused(value: object) -> None:
    ds = header_dataset()
    if value is None:
        del ds.Rows
    else:
        with warnings.catch_warnings():  # pydicom warns: the value is not a US
            warnings.simplefilter("ignore")
            ds["Rows"].value = value  # unvalidated, as a sloppy sender writes it
    with pytest.raises(ImageRefused, match="Rows"):
        check_decode_bounds(ds, 50_000_000)


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    settings = Settings(storage_dir=tmp_path / "node", model=tmp_path / "tiny.onnx", decode_memory_bytes=0)
    write_tiny_model(settings.model_path, tiny_card(threshold=0.5))
    return Pipeline(settings, Store(settings.effective_database_url), PneumoniaModel(settings.model_path))


def test_a_pixel_bomb_study_is_not_applicable_with_its_reason(pipeline: Pipeline) -> None:
    bomb = claimed_size_pixel_bomb()
    study_uid = store_complete_study(pipeline, bomb)

    outcome = pipeline.analyse_study(study_uid)

    assert outcome.state is StudyState.NOT_APPLICABLE
    assert study_state(pipeline.store, study_uid) is StudyState.NOT_APPLICABLE
    assert outcome.reason is not None and "image too large to decode: 65535 x 65535" in outcome.reason
    analysis = latest_analysis(pipeline.store, study_uid)
    assert analysis is not None and analysis.instances_analysed == 0
    (decision,) = analysis.selection
    assert decision["selected"] is False and "DICOMNODE_MAX_IMAGE_PIXELS" in str(decision["reason"])


def test_the_oversized_instance_is_left_out_and_the_others_analysed(pipeline: Pipeline) -> None:
    good = make_phantom(np.random.default_rng(3), True, size=128)
    bomb = claimed_size_pixel_bomb()
    bomb.StudyInstanceUID = good.StudyInstanceUID
    study_uid = store_complete_study(pipeline, good, bomb)

    outcome = pipeline.analyse_study(study_uid)

    assert outcome.score is not None
    analysis = latest_analysis(pipeline.store, study_uid)
    assert analysis is not None and analysis.instances_analysed == 1
    reasons = {d["sop_instance_uid"]: d["reason"] for d in analysis.selection}
    assert "image too large" in str(reasons[bomb.SOPInstanceUID])


def test_the_decoder_in_this_process_gives_preprocess_s_tensor(tmp_path: Path) -> None:
    ds = make_phantom(np.random.default_rng(5), False, size=300)
    path = _write(ds, tmp_path / "x.dcm")
    config = PreprocessConfig(size=64)
    decoder = Decoder(DecodeLimits(memory_bytes=0))

    tensor = decoder.tensor(path, config, MAX_SIDE)

    assert np.array_equal(tensor, preprocess(pydicom.dcmread(path), config))
    display = decoder.display(path, config, 128)  # another max_side: decoded again, not cached
    assert display.source_shape == (300, 300) and display.pixels.shape == (128, 128)


@pytest.mark.parametrize("shape", [(2100, 1700), (700, 500), (300, 90)])
def test_a_display_shrunk_where_decoded_renders_the_same_heatmap(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(11)
    unit = rng.random(shape)
    cam = rng.random((7, 7))
    kwargs = dict(keep_aspect=True, lines=["NOT FOR DIAGNOSTIC USE", "P=0.50"], threshold=0.5)

    direct = render_heatmap(unit, cam, **kwargs)  # type: ignore[arg-type]
    shipped = render_heatmap(display_image_of(unit, MAX_SIDE), cam, **kwargs)  # type: ignore[arg-type]

    assert np.array_equal(direct.pixels, shipped.pixels)
    assert (direct.zoom, direct.banner_rows) == (shipped.zoom, shipped.banner_rows)
    with pytest.raises(ValueError, match="max_side"):
        render_heatmap(display_image_of(unit, 64), cam, **kwargs)  # type: ignore[arg-type]


def test_the_pipeline_s_heatmap_is_the_one_drawn_from_the_source(pipeline: Pipeline, tmp_path: Path) -> None:
    from dicomnode.results import build_heatmap_sc

    ds = make_phantom(np.random.default_rng(8), True, size=1100)  # over MAX_SIDE: shrunk
    path = _write(ds, tmp_path / "big.dcm")
    config = pipeline.model.preprocess_config
    display = Decoder(DecodeLimits(memory_bytes=0)).display(path, config, MAX_SIDE)
    card = pipeline.model.card
    from dicomnode.results import Finding

    finding = Finding(probability=0.7, threshold=card.threshold)
    cam = np.random.default_rng(1).random((7, 7))
    source = pydicom.dcmread(path)
    # sent as 8-bit gray levels of the float display (tests/unit/test_display_levels.py)
    assert np.array_equal(
        display.pixels, gray_levels(display_image_of(to_unit_image(source, config), MAX_SIDE).pixels)
    )
    a = build_heatmap_sc(source, cam, finding, card)
    b = build_heatmap_sc(pydicom.dcmread(path, defer_size="64 KB"), cam, finding, card, display=display)
    assert a.PixelData == b.PixelData and a.PixelSpacing == b.PixelSpacing


def test_decode_settings_are_validated() -> None:
    s = load_settings(env={})
    assert (s.max_image_pixels, s.decode_memory_bytes, s.decode_timeout_seconds) == (
        50_000_000,
        2 << 30,
        120.0,
    )
    assert load_settings(env={"DICOMNODE_DECODE_MEMORY_BYTES": "0"}).decode_memory_bytes == 0
    with pytest.raises(ConfigError, match="DICOMNODE_DECODE_MEMORY_BYTES=2048: use bytes"):
        load_settings(env={"DICOMNODE_DECODE_MEMORY_BYTES": "2048"})
    with pytest.raises(ConfigError, match="DICOMNODE_MAX_IMAGE_PIXELS"):
        load_settings(env={"DICOMNODE_MAX_IMAGE_PIXELS": "-1"})
    with pytest.raises(ConfigError, match="DICOMNODE_DECODE_TIMEOUT_SECONDS"):
        load_settings(env={"DICOMNODE_DECODE_TIMEOUT_SECONDS": "0"})
