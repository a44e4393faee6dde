"""The build step behind build_engines.py: ONNX export, OpenVINO conversion, TensorRT plans, numeric checks."""
