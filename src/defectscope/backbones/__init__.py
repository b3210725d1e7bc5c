"""The pretrained CNNs the detectors are built on, in one place.

- :mod:`.specs` (torch-free): backbone names, their stages and PaDiM defaults, the bundled
  weights and their identity, so that a cached feature graph is found without building the
  network;
- :mod:`.networks` (PyTorch): the architectures built and their weights loaded, and the
  feature extractor that returns the chosen stages.

Nothing is imported here: ``import defectscope.backbones.specs`` stays free of torch.
"""
