"""Measurements on artifacts: interleaved latency timing (``latency``) and MAC counts from ONNX (``macs``)."""
