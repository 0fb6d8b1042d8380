"""The model contract: what the service needs from a trained model, and what training must deliver.

- :mod:`~dicomnode.model.card`: the model card and the graph's input and output names;
- :mod:`~dicomnode.model.preprocess`: the one preprocessing, shared by training and the worker;
- :mod:`~dicomnode.model.decode`: decoding within bounds (the header's image size checked first,
  then decoding and preprocessing in a memory-limited child process);
- :mod:`~dicomnode.model.histogram`: the score histogram the card carries and drift compares;
- :mod:`~dicomnode.model.selection`: which instances of a study the model reads;
- :mod:`~dicomnode.model.session`: opening a model file with onnxruntime (card, checked session,
  the worker's :class:`PneumoniaModel`, :func:`predict_onnx`).

Training imports from here and the service never imports training. Importing this package imports
neither torch nor onnxruntime.
"""

from dicomnode.model.card import CAM_OUTPUT, INPUT_NAME, METADATA_KEY, PROBABILITY_OUTPUT, ModelCard
from dicomnode.model.decode import (
    DecodeFailed,
    DecodeLimits,
    Decoder,
    ImageRefused,
    ImageTooLarge,
    check_decode_bounds,
)
from dicomnode.model.histogram import SCORE_BIN_EDGES, score_histogram
from dicomnode.model.preprocess import PREPROCESS_VERSION, PreprocessConfig, preprocess
from dicomnode.model.selection import Decision, SelectionRules, select
from dicomnode.model.session import (
    CPU_PROVIDERS,
    PREFERRED_PROVIDERS,
    ModelLoadError,
    PneumoniaModel,
    onnx_session,
    predict_onnx,
    read_card,
)

__all__ = [
    "CAM_OUTPUT",
    "CPU_PROVIDERS",
    "INPUT_NAME",
    "METADATA_KEY",
    "PREFERRED_PROVIDERS",
    "PREPROCESS_VERSION",
    "PROBABILITY_OUTPUT",
    "SCORE_BIN_EDGES",
    "DecodeFailed",
    "DecodeLimits",
    "Decision",
    "Decoder",
    "ImageRefused",
    "ImageTooLarge",
    "ModelCard",
    "ModelLoadError",
    "PneumoniaModel",
    "PreprocessConfig",
    "SelectionRules",
    "check_decode_bounds",
    "onnx_session",
    "predict_onnx",
    "preprocess",
    "read_card",
    "score_histogram",
    "select",
]
