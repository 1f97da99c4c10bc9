"""Reading user YAML: duplicate keys are refused, and every failure says which file and what to do."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trainer.yamlio import UniqueKeyLoader, read_yaml_file, yaml_problem
from runtime.errors import InputError


class DocumentError(InputError):
    """Stands for the error type a caller passes (SpecError, ConfigError)."""


def read(path: Path) -> object:
    return read_yaml_file(path, "config", DocumentError, "pass the training YAML (docs/trainer.md)")


def test_a_valid_file_loads_with_anchors_and_merge_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nmerged:\n  <<: *b\n  y: 3\n", encoding="utf-8")
    assert read(path) == {"base": {"x": 1, "y": 2}, "merged": {"x": 1, "y": 3}}


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("data:\n  csv: a.csv\n  csv: b.csv\n", encoding="utf-8")
    with pytest.raises(DocumentError, match=r"config file .*config\.yaml is not valid YAML: key 'csv' is given "
                                            r"twice at line 3, column 3; fix it and retry\.$"):
        read(path)
    with pytest.raises(yaml.YAMLError):
        yaml.load("a: 1\na: 2\n", Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def test_a_missing_or_unreadable_file_names_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match=r"does not exist or is not a file; pass the training YAML "
                                            r"\(docs/trainer\.md\)\.$"):
        read(tmp_path / "absent.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(DocumentError, match=r"cannot be read \(.*\); pass a UTF-8 YAML file\.$"):
        read(binary)


def test_yaml_problem_is_one_line_with_its_position() -> None:
    with pytest.raises(yaml.YAMLError) as caught:
        yaml.safe_load("a: [1,\n  2\n")
    assert yaml_problem(caught.value).endswith("at line 3, column 1")
    assert yaml_problem(yaml.YAMLError("two\n  lines")) == "two lines"
