"""The engine: everything around a detector's fitter and module. Its folders, from the top
(imports point down this list only; tests/test_architecture.py checks it):

- :mod:`.workflows`: ``loading`` (``load``: a model file or an exported .onnx), ``evaluation``
  (metrics on a test split), ``predicting`` (predict to a folder), ``calibration`` (a threshold
  from labelled parts), ``benchmark`` (benchmark, fit over a root);
- :mod:`.fitting`: ``estimator`` (the Python API's estimators: files -> batches ->
  fitter/module, out-of-fold scores, a detector restoring itself from a saved file),
  ``options`` (every option gathered for the CLI and config files), ``sharding`` (executors
  and shard jobs);
- :mod:`.persistence`: ``files`` (model files: read and write only);
- :mod:`.runtimes`: ``onnx_session`` (how every ONNX Runtime session runs), ``runtime`` (feature
  extractors exported and cached), ``lean`` (the torch-free path), ``exported`` (ONNX export
  and running it without torch);
- :mod:`.scoring`: ``scorer`` (scoring shared by estimators and exported files), ``shortcuts``
  (the trivial scores and the shift checks);
- :mod:`.rules`: ``settings`` (the engine's own options), ``operating`` (the label-free
  threshold and the checks of a fitted model's record).

No module imports one that imports it back, not even inside a function.
"""
