"""The ResNet's outputs, and its ONNX export: matches torch, carries the card, read back; the node
scores a DICOM file as torch does."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dicomnode.model import (  # noqa: E402
    CAM_OUTPUT,
    INPUT_NAME,
    METADATA_KEY,
    PROBABILITY_OUTPUT,
    ModelCard,
    ModelLoadError,
    PneumoniaModel,
    PreprocessConfig,
    predict_onnx,
    preprocess,
    read_card,
)
from dicomnode.testing.phantoms import make_phantom  # noqa: E402
from training.export import ExportMismatchError, export_onnx, verify_onnx  # noqa: E402
from training.model import ModelConfig, ResNetCAM, build_model  # noqa: E402
from training.train import load_checkpoint_model, predict  # noqa: E402

if TYPE_CHECKING:
    from tests.unit.conftest import TrainedRun


def _card(size: int) -> ModelCard:
    return ModelCard(
        name="test-model",
        version="0.0.1",
        threshold=0.42,
        device_uid="1.2.3.4.5",
        preprocess=PreprocessConfig(size=size).to_dict(),
        architecture="resnet18-w8",
        metrics={"val": {"auroc": 0.95}},
    )


def _trained_looking_model(seed: int = 0) -> ResNetCAM:
    """A small model with non-trivial BatchNorm statistics, as after training."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(depth=18, width=8))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.logits(torch.randn(8, 1, 64, 64) * 2 + 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.1)
        model.fc.weight.normal_(0.0, 0.3)
    return model.eval()


def test_forward_returns_probability_and_a_unit_scaled_cam() -> None:
    model = _trained_looking_model()
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        prob, cam = model(x)
        assert torch.allclose(prob, torch.sigmoid(model.logits(x)))
    assert prob.shape == (3,) and cam.shape == (3, 2, 2)  # stride 32
    assert torch.all((prob > 0) & (prob < 1))
    assert torch.all((cam >= 0) & (cam <= 1))
    maxima = cam.amax(dim=(1, 2))
    assert torch.all((maxima > 0.999) | (maxima == 0))


def test_resnet34_and_widths_build_and_bad_depth_is_refused() -> None:
    model = build_model(ModelConfig(depth=34, width=8))
    prob, cam = model.eval()(torch.randn(1, 1, 96, 96))
    assert prob.shape == (1,) and cam.shape == (1, 3, 3)
    assert ModelConfig(depth=34, width=8).name == "resnet34-w8"
    with pytest.raises(ValueError, match="depth"):
        ModelConfig(depth=50)


@pytest.fixture
def exported(trained_run: TrainedRun) -> tuple[ResNetCAM, Path, ModelCard]:
    """The shared run's model, its export (by export_onnx, 64 px input) and its card."""
    assert trained_run.config.preprocess.size == 64
    return trained_run.result.model, trained_run.onnx, trained_run.card


@pytest.mark.slow
def test_export_writes_only_the_model_file(exported: tuple[ResNetCAM, Path, ModelCard]) -> None:
    _, path, _ = exported
    assert path.name == "m.onnx"
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"]  # no temporary files left


@pytest.mark.slow
def test_export_matches_torch_within_1e_4_on_any_batch_size(
    exported: tuple[ResNetCAM, Path, ModelCard],
) -> None:
    model, path, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME]
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, 1, 64, 64)).astype(np.float32)
        prob, cam = session.run([PROBABILITY_OUTPUT, CAM_OUTPUT], {INPUT_NAME: x})
        with torch.no_grad():
            t_prob, t_cam = model(torch.from_numpy(x))
        assert prob.shape == (n,) and cam.shape == (n, 2, 2)
        assert np.abs(prob - t_prob.numpy()).max() <= 1e-4
        assert np.abs(cam - t_cam.numpy()).max() <= 1e-4


@pytest.mark.slow
def test_read_card_round_trips_the_card(exported: tuple[ResNetCAM, Path, ModelCard]) -> None:
    _, path, card = exported
    assert read_card(path) == card
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert ModelCard.from_json(meta[METADATA_KEY]) == card


@pytest.mark.slow
def test_verification_catches_a_model_that_differs_from_the_file(
    exported: tuple[ResNetCAM, Path, ModelCard],
) -> None:
    _, path, _ = exported
    with pytest.raises(ExportMismatchError, match="do not deploy"):
        verify_onnx(_trained_looking_model(1), path, 64)


@pytest.mark.slow
def test_node_reproduces_the_torch_score_on_the_same_dicom(trained_run: TrainedRun, tmp_path: Path) -> None:
    files = []
    for i in range(4):
        files.append(tmp_path / f"{i}.dcm")
        ds = make_phantom(np.random.default_rng([31, i]), i % 2 == 1, size=96)
        pydicom.dcmwrite(files[-1], ds, enforce_file_format=True)
    node = PneumoniaModel(trained_run.onnx)
    # what worker.pipeline does per instance: read, preprocess with the card's config, predict
    x = np.stack([preprocess(pydicom.dcmread(f), node.preprocess_config) for f in files])
    node_p, node_cam = node.predict(x)
    torch_model = load_checkpoint_model(trained_run.checkpoint)  # the exported best weights
    assert np.abs(node_p - predict(torch_model, x)).max() <= 1e-4
    with torch.no_grad():
        _, torch_cam = torch_model(torch.from_numpy(x))
    assert np.abs(node_cam - torch_cam.numpy()).max() <= 1e-4
    direct_p, _ = predict_onnx(trained_run.onnx, x)
    assert np.array_equal(node_p, direct_p)


def test_export_needs_a_card_with_the_input_size(tmp_path: Path) -> None:
    card = _card(64)
    bad = ModelCard(**{**card.__dict__, "preprocess": {}})
    with pytest.raises(ValueError, match="size"):
        export_onnx(_trained_looking_model(), tmp_path / "m.onnx", bad)


def _identity_model() -> onnx.ModelProto:
    """A valid ONNX model with the contract's input and probability output but no CAM output."""
    node = onnx.helper.make_node("Identity", ["image"], ["probability"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("probability", onnx.TensorProto.FLOAT, [1])],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def test_read_card_refuses_files_that_are_not_dicomnode_models(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="demo-model"):
        read_card(tmp_path / "missing.onnx")
    plain = _identity_model()  # a valid ONNX model without the card
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="no 'dicomnode.model_card' metadata"):
        read_card(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        read_card(tmp_path / "junk.onnx")
    # the card, but not the outputs the worker reads
    onnx.helper.set_model_props(plain, {METADATA_KEY: _card(64).to_json()})
    onnx.save(plain, str(tmp_path / "no-cam.onnx"))
    with pytest.raises(ValueError, match="outputs 'probability', 'cam': re-export it"):
        read_card(tmp_path / "no-cam.onnx")


def test_worker_model_refuses_what_read_card_refuses_with_the_same_message(tmp_path: Path) -> None:
    no_cam = _identity_model()
    onnx.helper.set_model_props(no_cam, {METADATA_KEY: _card(64).to_json()})
    onnx.save(no_cam, str(tmp_path / "no-cam.onnx"))
    for path, hint in ((tmp_path / "missing.onnx", "DICOMNODE_MODEL"), (tmp_path / "no-cam.onnx", "'cam'")):
        with pytest.raises((FileNotFoundError, ValueError)) as from_card:
            read_card(path)
        with pytest.raises(ModelLoadError, match=hint) as from_worker:
            PneumoniaModel(path)
        assert str(from_worker.value) == str(from_card.value)
