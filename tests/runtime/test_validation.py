"""The shared document checks: one collector, one wording, used by the manifest and the model spec."""
from __future__ import annotations

import math
from typing import Any

import pytest

from export.spec import SpecError, parse_spec
from runtime.errors import ManifestError, MedflowError
from runtime.manifest import parse_manifest
from runtime.validation import Problems, check_keys, choice, is_int, is_number, join_key
from tests.exportkit import base_spec
from tests.modelkit import make_manifest


def test_problems_raise_one_error_listing_every_problem_in_order() -> None:
    problems = Problems("config")
    problems.add("training.optimizer.lr", "must be > 0, got -1")
    problems.add("", "must be a mapping of keys, got None")
    with pytest.raises(ManifestError) as caught:
        problems.raise_if_any(ManifestError, "config.yaml is invalid: ", ". See docs/config.md.")
    assert str(caught.value) == ("config.yaml is invalid: training.optimizer.lr: must be > 0, got -1; "
                                 "config: must be a mapping of keys, got None. See docs/config.md.")


def test_problems_without_items_raise_nothing() -> None:
    problems = Problems("spec")
    problems.raise_if_any(MedflowError, "never: ")
    assert problems.items == []


@pytest.mark.parametrize(("value", "integer", "number"), [
    (3, True, True), (0, True, True), (-2, True, True), (1.5, False, True), (2.0, False, True),
    (True, False, False), (False, False, False), (math.nan, False, False), (math.inf, False, False),
    ("3", False, False), (None, False, False), ([1], False, False),
])
def test_is_int_and_is_number_refuse_bools_text_and_non_finite_values(value: Any, integer: bool,
                                                                      number: bool) -> None:
    assert is_int(value) is integer
    assert is_number(value) is number


def test_choice_returns_the_value_or_records_the_options() -> None:
    problems = Problems("spec")
    assert choice("mean", ("mean", "vote"), "output.ensemble", problems) == "mean"
    assert choice("median", ("mean", "vote"), "output.ensemble", problems) is None
    assert problems.items == ["output.ensemble: must be one of mean, vote, got 'median'"]


def test_check_keys_reports_unknown_keys_in_file_order_and_missing_keys_with_their_location() -> None:
    problems = Problems("config")
    data = {"momentum": 0.9, "lr": 0.1, "betas": [0.9, 0.99]}
    assert not check_keys(data, "training.optimizer", ("lr", "name"), ("momentum",), problems=problems)
    assert problems.items == [
        "training.optimizer.betas: unknown key; known keys are lr, name, momentum",
        "training.optimizer.name: missing",
    ]


def test_check_keys_passes_unknown_keys_through_when_nothing_required_is_missing() -> None:
    problems = Problems("config")
    assert check_keys({"lr": 1, 2: "x"}, "", ("lr",), problems=problems)
    assert problems.items == ["2: unknown key; known keys are lr"]
    assert check_keys({}, "window", (), ("overlap",), problems=problems)
    assert len(problems.items) == 1


@pytest.mark.parametrize(("where", "expected"), [("", "config"), ("training", "training")])
def test_check_keys_refuses_a_value_that_is_not_a_mapping(where: str, expected: str) -> None:
    problems = Problems("config")
    assert not check_keys([1, 2], where, ("lr",), problems=problems)
    assert problems.items == [f"{expected}: must be a mapping of keys, got [1, 2]"]


def test_join_key_starts_at_the_document() -> None:
    assert join_key("", "lr") == "lr"
    assert join_key("training.optimizer", 3) == "training.optimizer.3"


def test_manifest_and_spec_word_a_bad_section_the_same_way() -> None:
    data = make_manifest("0" * 64).to_dict()
    data["window"] = [8, 16, 16]
    with pytest.raises(ManifestError, match=r"window: must be a mapping of keys, got \[8, 16, 16\]"):
        parse_manifest(data)
    with pytest.raises(SpecError, match=r"window: must be a mapping of keys, got \[8, 16, 16\]"):
        parse_spec(base_spec(window=[8, 16, 16]))


def test_manifest_unknown_keys_name_the_known_ones() -> None:
    data = make_manifest("0" * 64).to_dict()
    data["output"]["colour"] = "red"
    with pytest.raises(ManifestError, match=r"output\.colour: unknown key; known keys are activation, label_rule"):
        parse_manifest(data)
    with pytest.raises(ManifestError, match=r"manifest: must be a mapping of keys, got \[\]"):
        parse_manifest([])


def test_an_integer_too_large_for_a_float_is_no_number_and_a_manifest_holding_one_is_refused():
    """JSON allows thousands of digits; float() of such an integer overflows."""
    assert not is_number(10 ** 400) and is_number(10 ** 300)
    from tests.modelkit import manifest_dict

    data = manifest_dict()
    data["window"]["overlap"] = 10 ** 400
    with pytest.raises(ManifestError, match="window.overlap: must be a number"):
        parse_manifest(data)
