"""The engine: everything around a detector's fitter and module.

- :mod:`.options`: the engine's options, every option gathered for the CLI and config files;
- :mod:`.estimator`: the Python API's estimators (files -> batches -> fitter/module -> results,
  the held-out threshold);
- :mod:`.scoring`: scoring shared by estimators and exported files (no NaN verdicts);
- :mod:`.persistence`: model files; :mod:`.exported`: ONNX export and running it without torch;
- :mod:`.evaluation`: metrics on a test split; :mod:`.workflows`: benchmark, cross-validation,
  predict to a folder; :mod:`.runtime`: ONNX Runtime for feature extractors.

Imports point down only: cli -> engine -> report -> models -> ops (a test checks it).
"""
