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


@pytest.mark.parametrize("text, served", [
    ("", [5]),                                                           # no policy: Triton serves the newest
    ("version_policy: { latest: { num_versions: 2 } }", [3, 5]),
    ("version_policy { latest { num_versions: 9 } }  # more than there are", [1, 2, 3, 5]),
    ("version_policy: { all { } }", [1, 2, 3, 5]),
    ("version_policy: { specific: { versions: [1, 3, 8] } }", [1, 3]),
    ("version_policy: { specific: { versions: 2 versions: 5 } }\ninstance_group [ { count: 2 } ]", [2, 5]),
])
def test_the_versions_a_policy_serves_are_read_as_triton_reads_them(text, served):
    from runtime.pbtxt import served_versions

    assert served_versions(text, "config.pbtxt", [5, 1, 3, 2]) == served
