"""Standalone inference runtime: numpy, SimpleITK and onnxruntime; never torch."""

__version__ = "0.1.0"
