"""Where the feature extractor runs: ONNX export, ONNX Runtime, the torch-free path."""
