"""dicomnode's training package: phantoms, data loaders, preprocessing, model, training, export.

Importing this package (and :mod:`training.preprocess`, :mod:`training.phantoms`) never imports
torch: the node and the workers use the preprocessing without the ``train`` extra installed.
"""
