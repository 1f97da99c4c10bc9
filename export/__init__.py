"""Packaging models into versioned folders of a Triton model repository."""

__version__ = "0.1.0"
