"""The engine: everything around a detector's fitter and module. Its modules, by role:

- options: :mod:`.settings` (the engine's own options), :mod:`.options` (every option gathered
  for the CLI and config files);
- fitting: :mod:`.estimator` (the Python API's estimators: files -> batches -> fitter/module,
  out-of-fold scores, a detector restoring itself from a saved file), :mod:`.operating` (the
  label-free threshold and its checks), :mod:`.sharding` (executors and shard jobs),
  :mod:`.calibration` (a threshold from labelled parts);
- scoring: :mod:`.scoring` (shared by estimators and exported files), :mod:`.shortcuts` (the
  trivial scores and the shift checks);
- files: :mod:`.persistence` (model files: read and write only), :mod:`.loading` (``load``),
  :mod:`.exported` (ONNX export and running it without torch);
- runtimes: :mod:`.onnx_session` (how every ONNX Runtime session runs), :mod:`.runtime` (feature
  extractors exported and cached), :mod:`.lean` (the torch-free path);
- workflows: :mod:`.evaluation` (metrics on a test split), :mod:`.predicting` (predict to a
  folder), :mod:`.workflows` (benchmark, fit over a root).

Imports point down only (cli -> engine -> report -> models -> ops) and no module imports one
that imports it back, not even inside a function (tests/test_architecture.py checks both).
"""
