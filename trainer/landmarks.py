"""`trainer landmarks`: the standard landmarks of a `histogram_standardise` step, learned from the
training images (Nyul and Udupa's histogram standardisation, as MR models need).

The images are read and preprocessed as training reads them, up to the place of the step: the
config's own `histogram_standardise` step (whose percentiles, region and channels are kept and whose
landmarks are replaced), or else the first normalising step (`zscore`, or a `rescale` that takes its
range from the image; one with fixed statistics is refused), or else the end. The result is the
config's whole preprocessing list with the learned step in that place, as YAML to paste into the
config. The config's own step may leave its landmarks out
(`- histogram_standardise: {percentiles: [...]}`) to be placed and set up before anything is learned.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from runtime.errors import InputError
from runtime.preprocess.intensity import image_landmarks, standard_landmarks
from runtime.preprocess.steps import LANDMARK_PERCENTILES, STEPS, Step, check_step, with_defaults
from trainer.config import CONFIG_DOC, Config, ConfigError, parse_config, plain
from trainer.data import naming, preprocessed
from trainer.subjects import Subject
from trainer.yamlio import read_yaml_file

STEP = "histogram_standardise"
# Steps a learned histogram_standardise step goes before when the config lists none.
NORMALISING_STEPS = ("zscore", "rescale", "normalize")
DECIMALS = 4


@dataclass(frozen=True)
class Place:
    """Where the step goes in the preprocessing list, and whether it replaces the step found there."""

    index: int
    replaces: bool


def load_for_learning(path: Path | str) -> Config:
    """The config at `path`, where a histogram_standardise step may leave `landmarks` out (or null):
    a step placed, with its percentiles, region and channels chosen, to be learned."""
    path = Path(path).resolve()
    data = read_yaml_file(path, "config", ConfigError, f"pass the training YAML ({CONFIG_DOC})")
    steps = data.get("preprocessing") if isinstance(data, dict) else None
    for item in steps if isinstance(steps, list) else ():
        if isinstance(item, dict) and len(item) == 1 and STEP in item:
            item[STEP] = _with_placeholder(item[STEP], data)
            break
    return parse_config(data, path)


def _with_placeholder(params: Any, data: dict[str, Any]) -> Any:
    """The step's parameters with stand-in landmarks in place of its own, which are learned anew
    whatever they are (anything else left for the config's own checks to judge)."""
    params = {} if params is None else params
    if not isinstance(params, dict):
        return params
    percentiles = params.get("percentiles", LANDMARK_PERCENTILES)
    chosen = params.get("channels")
    channels = chosen if isinstance(chosen, list) else (data.get("data") or {}).get("channels")
    if not (isinstance(percentiles, (list, tuple)) and isinstance(channels, list)):
        return params
    return {**params, "landmarks": [list(range(len(percentiles)))] * len(channels)}


def place_of(steps: Sequence[Step]) -> Place:
    """The config's own step, else before the first normalising step, else the end. A first
    normalising step with fixed statistics (normalize, a rescale with in_min / in_max) suits the
    intensities as read, not the standard scale the step gives, and is refused."""
    names = [step.name for step in steps]
    if STEP in names:
        return Place(names.index(STEP), replaces=True)
    normalising = [i for i, name in enumerate(names) if name in NORMALISING_STEPS]
    if not normalising:
        return Place(len(names), replaces=False)
    index = normalising[0]
    step = steps[index]
    fixed = step.name == "normalize" or (step.name == "rescale" and (
        step.params.get("in_min") is not None or step.params.get("in_max") is not None))
    if fixed:
        raise InputError(f"preprocessing[{index}] ({step.name}) normalises with fixed statistics that suit the "
                         f"intensities as read, not the 0..100 scale {STEP} gives; write `- {STEP}: {{}}` where "
                         f"it belongs, set that step's statistics for the standard scale, and run again.")
    return Place(index, replaces=False)


def _settings(steps: Sequence[Step], place: Place) -> dict[str, Any]:
    """The step's percentiles, region and channels: the config's, or the defaults with the channels of
    the step it goes before."""
    if place.replaces:
        return {key: value for key, value in steps[place.index].params.items() if key != "landmarks"}
    defaults = with_defaults(STEPS[STEP], {"landmarks": None})
    following = steps[place.index].params.get("channels") if place.index < len(steps) else None
    return {**{k: v for k, v in defaults.items() if k != "landmarks"}, "channels": following}


def learn(config: Config, subjects: Sequence[Subject], say: Callable[[str], None]) -> tuple[list[Step], Place]:
    """The config's preprocessing with a histogram_standardise step learned from `subjects`, and its place."""
    if config.modality == "histology":
        raise InputError("histogram_standardise is for radiology models; a slide is read and normalised tile by "
                         "tile (use `normalize` with the training set's mean and std).")
    if not subjects:
        raise InputError("the subject table lists no subject to learn landmarks from.")
    steps = list(config.preprocessing)
    place = place_of(steps)
    settings = _settings(steps, place)
    before = steps[:place.index]
    measured: list[list[np.ndarray]] = []          # per subject, per channel
    for number, subject in enumerate(subjects, start=1):
        with naming(subject):
            measured.append(image_landmarks(preprocessed(config, subject, before), settings))
        say(f"landmarks: subject {number}/{len(subjects)} ({subject.subject_id}) read")
    per_channel = list(zip(*measured))
    chosen = settings["channels"] if settings["channels"] is not None else range(len(config.data.channels))
    names = [config.data.channels[c] for c in chosen]
    _refuse_constant(subjects, measured, names)
    landmarks = [_rounded(standard_landmarks(values)) for values in per_channel]
    for name, found in zip(names, landmarks):
        _refuse_ties(found, settings["percentiles"], name)
    learned = Step(STEP, {"landmarks": landmarks, **settings})
    problems = check_step(learned.name, dict(learned.params))
    if problems:
        raise InputError(f"the learned {STEP} step is not valid ({'; '.join(problems)}); check the images.")
    steps[place.index:place.index + place.replaces] = [learned]
    return steps, place


def _refuse_constant(subjects: Sequence[Subject], measured: Sequence[Sequence[np.ndarray]],
                     names: Sequence[str]) -> None:
    """Subjects with one intensity at every landmark percentile of a channel's region, all named:
    they say nothing of a histogram's shape (they were left out of the landmarks without a word,
    and counted), and training refuses them, as the runtime would."""
    constant = [f"{subject.subject_id} ({name} is {values[0]:g} at each)"
                for subject, channels in zip(subjects, measured)
                for name, values in zip(names, channels) if values[-1] <= values[0]]
    if constant:
        shown = ", ".join(constant[:10]) + (f" and {len(constant) - 10} more" if len(constant) > 10 else "")
        raise InputError(f"{len(constant)} subject(s) have the same intensity at every landmark percentile of the "
                         f"{STEP} step's region: {shown}; such an image cannot be standardised, and training refuses "
                         "it. Check its image, or leave it out of the table.")


def _refuse_ties(landmarks: list[float], percentiles: Sequence[float], channel: str) -> None:
    """Landmarks that do not increase (images with one intensity over part of the region) say where."""
    tied = sorted({p for i in range(1, len(percentiles)) if landmarks[i] <= landmarks[i - 1]
                   for p in (percentiles[i - 1], percentiles[i])})
    if tied:
        raise InputError(f"channel {channel}: the landmarks learned at percentiles {', '.join(f'{p:g}' for p in tied)} "
                         "are equal: the images hold one intensity over that part of the step's region (a clip or "
                         "threshold before the step, or a constant background in region whole). Give the step "
                         "percentiles above that part (`percentiles: [...]`), region nonzero, or place it before "
                         "the clip.")


def _rounded(landmarks: list[float]) -> list[float]:
    """The landmarks to DECIMALS places where that keeps them strictly increasing, else as they are."""
    short = [round(v, DECIMALS) for v in landmarks]
    return short if all(a < b for a, b in zip(short, short[1:])) else landmarks


def as_yaml(steps: Sequence[Step], place: Place, subjects: int) -> str:
    """The preprocessing list in the config's own form, headed by a comment saying what was learned."""
    before = ", ".join(step.name for step in steps[:place.index])
    head = (f"# {STEP} learned from {subjects} subject(s), on the images {f'after {before}' if before else 'as read'}; "
            "replace the config's preprocessing with this list:\n")
    body = yaml.safe_dump({"preprocessing": [{s.name: plain(dict(s.params))} for s in steps]},
                          default_flow_style=None, sort_keys=False, width=120)
    return head + body
