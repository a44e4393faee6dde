"""Runtime backends (torch, ONNX Runtime, OpenVINO, TensorRT): each turns components into the loop's runners.

Runtime code only: nothing here imports `engines.build`.
"""
