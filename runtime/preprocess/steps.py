"""The allow-list of preprocessing steps: name -> parameters and implementation."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from runtime.preprocess import geometry, intensity
from runtime.preprocess import params as p
from runtime.preprocess.geometry import Transform
from runtime.preprocess.orient import orientation_problem
from runtime.preprocess.volume import Volume

Apply = Callable[[Volume, Mapping[str, Any]], "tuple[Volume, Transform | None]"]


def _no_relations(params: Mapping[str, Any]) -> list[str]:
    return []


@dataclass(frozen=True)
class Step:
    """One preprocessing step as a manifest lists it: a name from `STEPS` and its parameters."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepSpec:
    """One step: its parameters, implementation and whether it rewrites `volume.array` in place."""

    params: Mapping[str, p.Param]
    apply: Apply
    in_place: bool = False
    relations: Callable[[Mapping[str, Any]], list[str]] = field(default=_no_relations)


def _rescale_relations(params: Mapping[str, Any]) -> list[str]:
    problems = p.bounds(dict(params), "in_min", "in_max", need_one=False)
    if params["in_min"] is not None and params["in_min"] == params["in_max"]:
        problems.append(f"in_min, in_max: the input range is empty (both {params['in_min']}); give in_min below in_max")
    if params["out_min"] >= params["out_max"]:
        problems.append(f"out_min, out_max: out_min ({params['out_min']}) must be below out_max ({params['out_max']})")
    if params["percentiles"] is not None and (params["in_min"] is not None or params["in_max"] is not None):
        problems.append("percentiles: give either percentiles or in_min/in_max, not both")
    return problems


def _normalize_relations(params: Mapping[str, Any]) -> list[str]:
    if len(params["mean"]) != len(params["std"]):
        return [f"mean, std: give as many std values as mean values, got {len(params['mean'])} and {len(params['std'])}"]
    return []


def _landmark_relations(params: Mapping[str, Any]) -> list[str]:
    count = len(params["percentiles"])
    problems = [f"landmarks[{i}]: must give one value per percentile ({count}), got {len(row)}"
                for i, row in enumerate(params["landmarks"]) if len(row) != count]
    if params["channels"] is not None and len(params["channels"]) != len(params["landmarks"]):
        problems.append(f"landmarks: must give one list per channel of `channels` ({len(params['channels'])}), "
                        f"got {len(params['landmarks'])}")
    return problems


def _clip_relations(params: Mapping[str, Any]) -> list[str]:
    """A clip's bounds, which must leave a range: min equal to max would make every voxel one value."""
    problems = _bounds_relations(params)
    if params["min"] is not None and params["min"] == params["max"]:
        problems.append(f"min, max: the range is empty (both {params['min']}); give min below max")
    return problems


def _bounds_relations(params: Mapping[str, Any]) -> list[str]:
    return p.bounds(dict(params), "min", "max", need_one=True)


def _foreground_relations(params: Mapping[str, Any]) -> list[str]:
    """A foreground step redefines the region by bounds, or fills the holes of the one it has."""
    problems = p.bounds(dict(params), "min", "max", need_one=not params["fill_holes"])
    return [f"{problem}, or fill_holes: true" if params["min"] is None else problem for problem in problems]


_CHANNELS = p.Param(p.channel_list)
# Where histogram_standardise takes its landmarks unless told otherwise: the 1st and 99th percentiles
# and the deciles between them.
LANDMARK_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
_BOUNDS = {"min": p.Param(p.number_or_null), "max": p.Param(p.number_or_null), "channels": _CHANNELS}


def _turned_before(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, None]:
    """reorient runs before the steps, on the scan as read (runtime.predict, trainer.data); here it is done."""
    return volume, None


STEPS: Mapping[str, StepSpec] = MappingProxyType({
    "reorient": StepSpec({"orientation": p.Param(orientation_problem, required=True)}, _turned_before),
    "resample": StepSpec(
        {"spacing": p.Param(p.spacing_mm, required=True),
         "method": p.Param(p.choice("linear", "nnunet"), default="linear")},
        geometry.resample,
    ),
    "resize": StepSpec({"shape": p.Param(p.grid_shape, required=True)}, geometry.resize),
    "crop_nonzero": StepSpec({"margin": p.Param(p.non_negative_int, default=0)}, geometry.crop_nonzero),
    "pad": StepSpec(
        {"shape": p.Param(p.grid_shape, required=True), "value": p.Param(p.number, default=0)}, geometry.pad,
    ),
    "threshold": StepSpec(_BOUNDS, intensity.threshold, in_place=True, relations=_bounds_relations),
    "clip": StepSpec(_BOUNDS, intensity.clip, in_place=True, relations=_clip_relations),
    "rescale": StepSpec(
        {
            "out_min": p.Param(p.number, default=0), "out_max": p.Param(p.number, default=1),
            "in_min": p.Param(p.number_or_null), "in_max": p.Param(p.number_or_null),
            "percentiles": p.Param(p.percentile_pair), "channels": _CHANNELS,
        },
        intensity.rescale, in_place=True, relations=_rescale_relations,
    ),
    "normalize": StepSpec(
        {"mean": p.Param(p.number_list, required=True), "std": p.Param(p.positive_list, required=True)},
        intensity.normalize, in_place=True, relations=_normalize_relations,
    ),
    "histogram_standardise": StepSpec(
        {
            "landmarks": p.Param(p.landmark_lists, required=True,
                                 remedy="; learn them with `trainer landmarks CONFIG`"),
            "percentiles": p.Param(p.increasing_percentiles, default=LANDMARK_PERCENTILES),
            "region": p.Param(p.choice("whole", "nonzero"), default="nonzero"), "channels": _CHANNELS,
        },
        intensity.histogram_standardise, in_place=True, relations=_landmark_relations,
    ),
    "foreground": StepSpec({**_BOUNDS, "fill_holes": p.Param(p.boolean, default=False)}, intensity.foreground,
                           relations=_foreground_relations),
    "zscore": StepSpec(
        {"region": p.Param(p.choice("whole", "nonzero", "mask"), required=True), "channels": _CHANNELS},
        intensity.zscore, in_place=True,
    ),
})


def with_defaults(spec: StepSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """The step's parameters with every omitted optional one at its default."""
    return {key: params.get(key, param.default) for key, param in spec.params.items()}


def check_step(name: str, params: object) -> list[str]:
    """Every problem with one step's name and parameters, as short strings; empty when valid."""
    spec = STEPS.get(name) if isinstance(name, str) else None
    if spec is None:
        return [f"unknown step {name!r}; known steps: {', '.join(sorted(STEPS))}"]
    if not isinstance(params, dict):
        return [f"params must be an object, got {type(params).__name__}"]
    known = ", ".join(spec.params)
    problems = [f"{key}: unknown parameter (known: {known})" for key in sorted(set(params) - set(spec.params), key=str)]
    for key, param in spec.params.items():
        if key not in params and param.required:
            problems.append(f"{key}: missing (required){param.remedy}")
        elif key in params and (what := param.check(params[key])) is not None:
            problems.append(f"{key}: {what}")
    if not problems:
        problems.extend(spec.relations(with_defaults(spec, params)))
    return problems


def uses_mask(steps: Any) -> bool:
    """Whether any of `steps` (Step objects) reads the mask given with the image (`region: mask`)."""
    return any(getattr(step, "params", {}).get("region") == "mask" for step in steps)
