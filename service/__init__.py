"""The HTTP layer: knows nothing of torch, TensorRT or ONNX Runtime (it talks to engines.base)."""
