"""Read the model card out of an exported ONNX file, with onnxruntime only (no torch, no onnx).

The worker calls :func:`read_card` when it loads a model: the card says how to preprocess
(``PreprocessConfig.from_dict(card.preprocess)``), which threshold to report at, and what to put
in the results' Contributing Equipment.
"""

from __future__ import annotations

from pathlib import Path

from training.card import CAM_OUTPUT, INPUT_NAME, METADATA_KEY, PROBABILITY_OUTPUT, ModelCard


def read_card(path: Path) -> ModelCard:
    """Return the :class:`~training.card.ModelCard` stored in the ONNX file at ``path``.

    Raises FileNotFoundError if there is no file, and ValueError if it is not a dicomnode model
    (no card, or inputs/outputs other than those in :mod:`training.card`).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no model at {path}: export one with training.export.export_onnx, or make the demo "
            "model with `python -m training demo-model --out PATH`"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"{path} is not a loadable ONNX model ({exc}): re-export it") from exc
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ValueError(
            f"{path} has no {METADATA_KEY!r} metadata: it was not exported by "
            "training.export.export_onnx; re-export it there"
        )
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name for o in session.get_outputs()}
    if inputs != [INPUT_NAME] or not {PROBABILITY_OUTPUT, CAM_OUTPUT} <= outputs:
        raise ValueError(
            f"{path} has inputs {inputs} and outputs {sorted(outputs)}; dicomnode needs input "
            f"{INPUT_NAME!r} and outputs {PROBABILITY_OUTPUT!r}, {CAM_OUTPUT!r}: re-export it"
        )
    return ModelCard.from_json(meta[METADATA_KEY])


__all__ = ["read_card"]
