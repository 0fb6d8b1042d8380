"""dicomnode's training package: phantoms, data loaders, preprocessing, model, training, export.

Importing this package (and :mod:`dicomnode.model.preprocess`, :mod:`dicomnode.testing.phantoms`) never imports
torch: the node and the workers use the preprocessing without the ``train`` extra installed.

Torch-free: :mod:`~dicomnode.model.card` (model card), :mod:`~dicomnode.model.preprocess` (the one
preprocessing), :mod:`~dicomnode.testing.phantoms` (synthetic DX/CR studies), :mod:`~training.datasets`
(folder/RSNA loaders, patient split), :mod:`~training.evaluate` (metrics, calibration, bootstrap
intervals, the drift baseline histogram), :mod:`~dicomnode.model.modelfile` (read a card from an ONNX
file, score it with onnxruntime), :mod:`~training.plots` (PNG charts in numpy),
:mod:`~training.report` (the training report), :mod:`~training.quantize` (INT8 with onnxruntime;
needs onnx), :mod:`~training.demo` (torch only when it has to train). Need torch:
:mod:`~training.model`, :mod:`~training.train`, :mod:`~training.export`. Command line:
``python -m training --help`` (``dicomnode train`` forwards to it).
"""
