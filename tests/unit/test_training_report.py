"""The training report: Markdown and HTML with valid PNG plots and the metrics table with CIs."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from dicomnode.model.card import ModelCard
from training.evaluate import evaluate_scores
from training.plots import Canvas, Chart, Series, encode_png, nice_ticks
from training.report import REPORT_HTML, REPORT_MD, write_report


def _decode_png(data: bytes) -> tuple[int, int, np.ndarray]:
    """Width, height and RGB pixels of an 8-bit RGB PNG with unfiltered rows (what we write)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    chunks: dict[bytes, bytes] = {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    assert list(chunks)[0] == b"IHDR" and list(chunks)[-1] == b"IEND"
    w, h, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour) == (8, 2)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert not raw[:, 0].any()  # filter type 0 on every row
    return w, h, raw[:, 1:].reshape(h, w, 3)


def test_png_encoder_round_trips_the_pixels() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    w, h, pixels = _decode_png(encode_png(rgb))
    assert (w, h) == (11, 7)
    assert np.array_equal(pixels, rgb)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(rgb.astype(np.float32))


def test_text_and_lines_put_ink_where_asked() -> None:
    c = Canvas(60, 20)
    c.text(2, 2, "AUC 0.9")
    ink = np.any(c.pixels != 255, axis=2)
    assert ink[2:9, 2:44].any() and not ink[10:, :].any()
    c.polyline([0, 59], [15, 15], (255, 0, 0), width=2)
    assert (c.pixels[15, :, 0] == 255).all() and (c.pixels[15, :, 1] == 0).all()


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.5, 12.5, integer=True) == [5.0, 10.0]
    assert all(float(t).is_integer() for t in nice_ticks(0.5, 2.5, integer=True))


@pytest.mark.slow
def test_report_writes_markdown_html_and_valid_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(bool)
    s = 1 / (1 + np.exp(-(rng.standard_normal(200) + 2.5 * (y - 0.5))))
    yt = rng.integers(0, 2, 100).astype(bool)
    st = 1 / (1 + np.exp(-(rng.standard_normal(100) + 2.0 * (yt - 0.5))))
    val = evaluate_scores(y, s, target_sensitivity=0.9, bootstrap=200)
    test = evaluate_scores(yt, st, threshold=val["threshold"], bootstrap=200)
    card = ModelCard(
        name="report-model",
        version="9.9.9",
        threshold=val["threshold"],
        device_uid="2.25.7",
        preprocess={"size": 32},
        metrics={"val": val, "test": test, "target_sensitivity": 0.9, "n_train": 700, "n_val": 200},
    )
    history = [
        {
            "epoch": e,
            "loss": 0.7 / e,
            "val_loss": 0.8 / e,
            "val_auroc": 0.6 + 0.03 * e,
            "val_ap": 0.55 + 0.03 * e,
        }
        for e in range(1, 8)
    ]
    md = write_report(
        tmp_path, card, val=(y, s), test=(yt, st), history=history, command="python -m training x"
    )
    assert md == tmp_path / REPORT_MD
    text = md.read_text()
    html = (tmp_path / REPORT_HTML).read_text()

    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert set(images) == {
        "roc.png",
        "pr.png",
        "calibration.png",
        "scores_validation.png",
        "loss.png",
        "val_auroc.png",
    }
    for name in images:
        w, h, pixels = _decode_png((tmp_path / name).read_bytes())
        assert (w, h) == (560, 440), name
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= 4, f"{name} is nearly blank"
        assert f'src="{name}"' in html

    lo, hi = val["auroc_ci"]
    assert f"| AUROC | {val['auroc']:.3f} ({lo:.3f}-{hi:.3f}) | {test['auroc']:.3f} (" in text
    assert "Calibration error (ECE, 10 bins)" in text and "| Pneumonia | " in text
    assert "1000 resamples" not in text and "200 resamples" in text
    assert "python -m training x" in text and "<table>" in html


def test_charts_refuse_empty_limits() -> None:
    chart = Chart("t", "x", "y", xlim=(1.0, 1.0))
    chart.add(Series([0, 1], [0, 1]))
    with pytest.raises(ValueError, match="empty limits"):
        chart.png()
