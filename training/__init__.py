"""dicomnode's training package: data loaders, model, training, evaluation, export, quantisation.

It builds models to the contract in :mod:`dicomnode.model` (card, preprocessing, score histogram,
reading an ONNX file), imports it from there and nothing else of the service but
:mod:`dicomnode.testing.phantoms` (synthetic DX/CR studies) and :mod:`dicomnode.results.font` (the
plots' text). The service never imports this package, except ``dicomnode train`` and ``dicomnode
demo`` in :mod:`dicomnode.cli`, which call into it.

Importing this package never imports torch. Torch-free: :mod:`~training.datasets` (folder/RSNA
loaders, patient split), :mod:`~training.image_sets` (class folders such as Kermany's, NIH/CheXpert
image tables), :mod:`~training.image_files` (PNG/JPEG through the node's preprocessing),
:mod:`~training.assess` (an exported model scored on a labelled set through the node's path), :mod:`~training.evaluate` (metrics, calibration, bootstrap intervals),
:mod:`~training.plots` (PNG charts in numpy), :mod:`~training.report` (the training report),
:mod:`~training.quantize` (INT8 with onnxruntime; needs onnx), :mod:`~training.demo` (torch only
when it has to train). Need torch: :mod:`~training.model`, :mod:`~training.train`,
:mod:`~training.export`. Command line: ``python -m training --help`` (``dicomnode train`` forwards
to it).
"""
