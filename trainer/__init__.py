"""Training package: YAML config + subject CSV -> cross-validated PyTorch models."""

__version__ = "0.1.0"
