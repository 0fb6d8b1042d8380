"""Versions you can trace (issue 18.2): a model's version comes from its weights, never shared by two
different models, and names itself in the Series Description of every result series.

Upgrade, rollback and audit are tests/integration/test_model_versions.py; retraction at a real
Orthanc is tests/integration/test_retract.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.model import read_card
from dicomnode.model.card import (
    DEFAULT_BASE_VERSION,
    MAX_VERSION_LENGTH,
    ModelCard,
    check_version,
    weights_version,
)
from dicomnode.results import Finding, build_heatmap_sc, build_sr
from dicomnode.results.sc import SC_SERIES_DESCRIPTIONS
from dicomnode.results.sr import SR_SERIES_DESCRIPTIONS
from dicomnode.results.uids import result_uids, series_description
from dicomnode.store.db import Store

A = "1a2b3c4d" + "0" * 56
B = "ffee0011" + "0" * 56


def test_a_version_is_its_base_plus_the_weights_hash() -> None:
    assert weights_version("0.1.0", A) == "0.1.0+1a2b3c4d"
    assert weights_version("1.2.0+site3", A) == "1.2.0+site3.1a2b3c4d"
    assert weights_version("0.1.0", A) != weights_version("0.1.0", B)
    # different weights, different result UIDs: one model's results never overwrite another's
    study = "1.2.826.0.1.3680043.10.999.5"
    assert result_uids(study, weights_version("0.1.0", A)) != result_uids(study, weights_version("0.1.0", B))


def test_a_bad_version_is_refused_naming_the_fix() -> None:
    with pytest.raises(ValueError, match="empty"):
        weights_version(" ", A)
    with pytest.raises(ValueError, match="hex"):
        weights_version("0.1.0", "not-hex")
    with pytest.raises(ValueError, match="over 64"):
        weights_version("x" * (MAX_VERSION_LENGTH - 8), A)
    with pytest.raises(ValueError, match="backslash"):
        check_version("1.0\\2")
    with pytest.raises(ValueError, match="printable"):
        check_version("1.0\t2")
    assert check_version("1.0.0+1a2b3c4d") == "1.0.0+1a2b3c4d"


@pytest.mark.parametrize(
    "version", ["0.1.0+1a2b3c4d", "0.1.0-demo+1a2b3c4d.int8", "2026.01.15-site-radiology+1a2b3c4d", "v" * 64]
)
def test_series_descriptions_carry_the_version_within_64_characters(version: str) -> None:
    for templates in (SR_SERIES_DESCRIPTIONS, SC_SERIES_DESCRIPTIONS):
        text = series_description(templates, version)
        assert len(text) <= 64
        assert version in text
    short = series_description(SR_SERIES_DESCRIPTIONS, "0.1.0+1a2b3c4d")
    assert short == "AI pneumonia triage 0.1.0+1a2b3c4d (not for diagnostic use)"
    assert "NOT FOR DIAGNOSTIC USE" in series_description(SC_SERIES_DESCRIPTIONS, "0.1.0-demo+1a2b3c4d.int8")


def test_sr_and_sc_name_the_model_version_in_their_series_description(
    results_card: ModelCard, results_phantom: Callable[..., pydicom.Dataset]
) -> None:
    source = results_phantom(1)
    finding = Finding(0.9, results_card.threshold)
    sr = build_sr([source], finding, results_card)
    sc = build_heatmap_sc(source, np.zeros((8, 8), dtype=np.float32), finding, results_card)
    for ds in (sr, sc):
        assert results_card.version in ds.SeriesDescription, ds.SeriesDescription
        assert ds.SoftwareVersions == results_card.version
    assert "not for diagnostic use" in sr.SeriesDescription.lower()
    assert "NOT FOR DIAGNOSTIC USE" in sc.SeriesDescription


@pytest.mark.slow
def test_two_retrains_without_version_get_different_versions(tmp_path: Path) -> None:
    """`train` without --version, twice on different seeds: two models, two versions, both derived
    from the weights (and the same weights exported again keep theirs)."""
    pytest.importorskip("torch")
    from training.__main__ import main

    tiny = ["--n-phantoms", "48", "--phantom-size", "64", "--image-size", "64", "--width", "8"]
    tiny += ["--epochs", "1", "--batch-size", "8", "--threads", "1", "--bootstrap", "0"]
    versions = []
    for seed in (3, 4):
        out = tmp_path / f"m{seed}.onnx"
        assert main(["train", *tiny, "--seed", str(seed), "--onnx", str(out)]) == 0
        versions.append(read_card(out).version)
    assert versions[0] != versions[1], versions
    for v in versions:
        base, _, weights = v.partition("+")
        assert base == DEFAULT_BASE_VERSION and len(weights) == 8 and int(weights, 16) >= 0


def test_audit_finds_every_version_that_analysed_a_study_after_upgrade_and_rollback(tmp_path: Path) -> None:
    from dicomnode.store.db import Store

    store = Store(f"sqlite:///{tmp_path / 'node.sqlite3'}")
    try:
        check_audit_by_version(store)
    finally:
        store.dispose()


def check_audit_by_version(store: Store) -> None:
    """One study analysed by A, B (upgrade), A (rollback): ``audit --model-version`` finds it under
    both, each row showing that version's latest analysis (PostgreSQL too: tests/integration)."""
    from dicomnode.ops.audit import AuditFilter, studies, summary
    from dicomnode.store.models import StudyState
    from dicomnode.store.records import (
        InstanceRecord,
        record_instance,
        set_study_state,
        start_analysis,
        update_analysis,
    )

    study = "1.2.826.0.1.3680043.10.999.6"
    record_instance(
        store,
        InstanceRecord(
            study,
            study + ".1",
            study + ".1.1",
            "1.2.840.10008.5.1.4.1.1.1",
            "1.2.840.10008.1.2.1",
            "CR",
            "/x.dcm",
            1,
            None,
            "CR_ER1",
        ),
    )
    scores: dict[str, list[float]] = {}
    for n, version in enumerate(("1.0.0+aaaa1111", "1.1.0+bbbb2222", "1.0.0+aaaa1111")):  # upgrade, rollback
        set_study_state(store, study, StudyState.COMPLETE)
        analysis = start_analysis(
            store, study, model_name="m", model_version=version, queued_at=None, execution="inprocess"
        )
        update_analysis(store, analysis, score=0.1 * (n + 1))
        scores.setdefault(version, []).append(0.1 * (n + 1))
        set_study_state(store, study, StudyState.DELIVERED)
    for version in scores:
        rows = studies(store, AuditFilter(model_version=version))
        assert [r.study_uid for r in rows] == [study], version
        # the row shows that version's latest analysis, not the study's latest
        assert rows[0].model_version == version and rows[0].score == pytest.approx(scores[version][-1])
    assert studies(store, AuditFilter(model_version="9.9.9+00000000")) == []
    assert summary(store, AuditFilter(model_version="1.1.0+bbbb2222"), by="state")[0].studies == 1
