"""A tiny real ONNX model that honours the model contract, built in milliseconds without torch.

The fast tier needs a model to run the pipeline end to end; training one takes tens of seconds.
This graph is a real classifier, if a poor one: P = sigmoid(w * mean(image) + b), and the CAM is the
sigmoid of the image average-pooled to 8 x 8. Input and output names, shapes and the card in the
metadata are those of :mod:`dicomnode.model.card`, so the service loads it like any exported model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicomnode.model.card import CAM_OUTPUT, INPUT_NAME, METADATA_KEY, PROBABILITY_OUTPUT, ModelCard
from dicomnode.model.preprocess import PreprocessConfig

SIZE = 64


def tiny_card(threshold: float = 0.5) -> ModelCard:
    return ModelCard(
        name="tiny-test-model",
        version="0.0.1-test",
        threshold=threshold,
        device_uid=generate_uid(entropy_srcs=["tiny-test-model"]),
        preprocess=PreprocessConfig(size=SIZE).to_dict(),
    )


def write_tiny_model(path: Path, card: ModelCard | None = None, *, weight: float = 4.0) -> Path:
    """Write the tiny model with ``card`` (default :func:`tiny_card`) to ``path``."""
    onnx = pytest.importorskip("onnx", reason="onnx comes with the train extra (make test installs it)")
    from onnx import TensorProto, helper

    card = card or tiny_card()
    size = int(card.preprocess["size"])
    pool = size // 8
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "w"], ["scaled"]),
        helper.make_node("Add", ["scaled", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [PROBABILITY_OUTPUT]),
        helper.make_node(
            "AveragePool", [INPUT_NAME], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]
        ),
        helper.make_node("Sigmoid", ["pooled"], ["cam4"]),
        helper.make_node("Squeeze", ["cam4", "axis1"], [CAM_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, size, size])],
        [
            helper.make_tensor_value_info(PROBABILITY_OUTPUT, TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info(CAM_OUTPUT, TensorProto.FLOAT, ["N", 8, 8]),
        ],
        initializer=[
            helper.make_tensor("w", TensorProto.FLOAT, [], [weight]),
            helper.make_tensor("b", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: card.to_json()})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
