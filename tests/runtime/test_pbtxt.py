"""A Triton config.pbtxt read as Triton reads it: the backend its model runs on."""
from __future__ import annotations

import pytest

from runtime.errors import ManifestError
from runtime.pbtxt import config_backend


def test_a_models_backend_is_read_past_the_comments_around_it_or_from_its_platform():
    for text in ('backend: "onnxruntime"  # tuned by ops', 'backend: "onnxruntime" # not "python"',
                 '# placed by hand\n# twice\nbackend: "onnxruntime"\nname: "m"',
                 "name: 'm' # backend: 'python'\nbackend: 'onnxruntime'", 'platform: "onnxruntime_onnx"'):
        assert config_backend(text, "t") == "onnxruntime", text
    assert config_backend('backend: "python"', "t") == "python"
    assert config_backend("name: 'm'", "t") is None
    with pytest.raises(ManifestError, match="t is not a config Triton can read"):
        config_backend("backend 'onnxruntime'", "t")              # a string field takes its colon
