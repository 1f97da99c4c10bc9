"""Random augmentation through TorchIO: an allow-list of named transforms, each with a probability.

Frames: our arrays are `(C, *spatial)` in the model's axis order; TorchIO images are `(C, W, H, D)`
and TorchIO axis i is our spatial axis i, so `axes: [0, 1]` names our array axes. A 2-D array
`(C, H, W)` travels as `(C, H, W, 1)` and no transform moves or resamples along that singleton axis.
The images carry an identity affine, so every length (translation, displacement, blur std) is in
voxels of the preprocessed grid and every angle is in degrees.

Intensity transforms (blur, noise, gamma, bias_field, motion, ghosting, spike) change the
`ScalarImage` only; spatial transforms move the `LabelMap` with nearest-neighbour interpolation so
labels stay aligned with the image (anisotropy changes the image only: it moves nothing).

Colour transforms (hed, brightness, contrast, saturation, hue) are for histology: they change an
RGB image of 3 channels holding 0-255 values, as slides are read, before the model's preprocessing
(the trainer runs a histology model's preprocessing after augmentation, on each image, as the
runtime runs it on each slide window). They refuse any other image.

Each configured augmentation is applied with its `probability`, except flip, where `probability` is
the chance that each listed axis is flipped, independently. Transforms run in allow-list order
(spatial first, then colour, then intensity), whatever the order of the config's keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torchio as tio

from runtime.errors import InputError
from runtime.validation import is_int, is_number

Check = Callable[[Any, int], "str | None"]
Pair = tuple[float, float]


@dataclass(frozen=True)
class Param:
    """One augmentation parameter: its check (value, dimensions) -> problem, and its default."""

    check: Check
    default: Any


@dataclass(frozen=True)
class Augmentation:
    """One allow-listed augmentation: its parameters and the builder of its TorchIO transform."""

    params: Mapping[str, Param]
    build: Callable[[Mapping[str, Any], int], tio.Transform]


# ---------------------------------------------------------------- parameter checks


def _probability(value: Any, dimensions: int) -> str | None:
    if is_number(value) and 0 <= value <= 1:
        return None
    return f"must be in [0, 1], got {value!r}"


def _is_pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value)


def _number_or_range(number_min: float, pair_min: float | None, number_max: float | None = None) -> Check:
    """A single number in [number_min, number_max) or a range [min, max] with pair_min <= min <= max."""
    def check(value: Any, dimensions: int) -> str | None:
        if is_number(value):
            if value < number_min or (number_max is not None and value >= number_max):
                upper = f" and < {number_max}" if number_max is not None else ""
                return f"a single number must be >= {number_min}{upper}, got {value!r}"
            return None
        if not _is_pair(value):
            return f"must be a number or a range [min, max], got {value!r}"
        if value[0] > value[1]:
            return f"a range [min, max] needs min <= max, got {list(value)}"
        if pair_min is not None and value[0] < pair_min:
            return f"a range [min, max] needs min >= {pair_min}, got {list(value)}"
        return None
    return check


def _non_negative_number(value: Any, dimensions: int) -> str | None:
    return None if is_number(value) and value >= 0 else f"must be a number >= 0, got {value!r}"


def _scales(value: Any, dimensions: int) -> str | None:
    problem = _number_or_range(0, 0, 1)(value, dimensions)
    if problem is None and _is_pair(value) and value[0] <= 0:
        return f"a range [min, max] of scale factors needs min > 0, got {list(value)}"
    return problem


def _hue_shift(value: Any, dimensions: int) -> str | None:
    """A hue shift in turns of the colour wheel: a number in [0, 0.5] or a range within [-0.5, 0.5]."""
    if is_number(value):
        return None if 0 <= value <= 0.5 else f"a single number must be in [0, 0.5] (turns of the colour wheel), got {value!r}"
    if not _is_pair(value):
        return f"must be a number or a range [min, max], got {value!r}"
    if not -0.5 <= value[0] <= value[1] <= 0.5:
        return f"a range [min, max] needs -0.5 <= min <= max <= 0.5, got {list(value)}"
    return None


def _int_or_range(value: Any, dimensions: int) -> str | None:
    if is_int(value) and value >= 0:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) and v >= 0 for v in value):
        return None if value[0] <= value[1] else f"a range [min, max] needs min <= max, got {list(value)}"
    return f"must be an integer >= 0 or a range [min, max] of integers >= 0, got {value!r}"


def _int_at_least(minimum: int) -> Check:
    def check(value: Any, dimensions: int) -> str | None:
        return None if is_int(value) and value >= minimum else f"must be an integer >= {minimum}, got {value!r}"
    return check


def _axes(count: int | None) -> Check:
    """A list of distinct spatial axes 0..dimensions-1; exactly `count` of them when given."""
    def check(value: Any, dimensions: int) -> str | None:
        valid = isinstance(value, (list, tuple)) and all(is_int(a) and 0 <= a < dimensions for a in value)
        if not valid or len(set(value)) != len(value) or not value:
            return f"must be a list of distinct axes among 0..{dimensions - 1}, got {value!r}"
        if count is not None and len(value) != count:
            return f"must name exactly {count} axes (the plane), got {list(value)}"
        return None
    return check


# ---------------------------------------------------------------- ranges and 2-D restrictions


def _pair(value: Any, single: Callable[[float], Pair]) -> Pair:
    """A range [min, max] as given, or the range a single number stands for."""
    if isinstance(value, (list, tuple)):
        return float(value[0]), float(value[1])
    return single(float(value))


def _symmetric(x: float) -> Pair:
    return -x, x


def _from_zero(x: float) -> Pair:
    return 0.0, x


def _around_one(x: float) -> Pair:
    return 1.0 - x, 1.0 + x


def _per_axis(pair: Pair, dimensions: int, still: float) -> tuple[float, ...]:
    """Six TorchIO range bounds: `pair` on every axis, or on the first two with the 2-D singleton axis held at `still`."""
    if dimensions == 3:
        return pair * 3
    return pair * 2 + (still, still)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# ---------------------------------------------------------------- rotation by multiples of 90 degrees


class RandomRot90(tio.transforms.augmentation.RandomTransform, tio.SpatialTransform):
    """Rotate image and label by 90, 180 or 270 degrees in the plane of two spatial axes (an exact permutation).

    A quarter turn swaps the lengths of the two axes; with `keep_shape` a plane that is not square
    is only turned by 180 degrees, so every output has the input's shape.
    """

    def __init__(self, axes: Sequence[int], keep_shape: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axes = (int(axes[0]), int(axes[1]))
        self.keep_shape = keep_shape
        self.args_names = ["axes", "keep_shape"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        subject.check_consistent_spatial_shape()
        shape = subject.spatial_shape
        square = shape[self.axes[0]] == shape[self.axes[1]]
        turns = (1, 2, 3) if square or not self.keep_shape else (2,)
        k = turns[int(torch.randint(len(turns), (1,)).item())]
        dims = (self.axes[0] + 1, self.axes[1] + 1)
        for image in self.get_images(subject):
            image.set_data(torch.rot90(image.data, k, dims).contiguous())
        return subject


# ---------------------------------------------------------------- colour transforms of RGB images (0-255)

# Luma weights (ITU-R 601), as the runtime's tissue mask measures brightness.
LUMA = np.array([0.299, 0.587, 0.114])
WHITE = 255.0


class ColourTransform(tio.transforms.augmentation.RandomTransform, tio.IntensityTransform):
    """A random change of the colours of every RGB `ScalarImage` of a subject; label maps are left
    as they are. Subclasses draw their settings with torch's generator (`draw`) and change an
    (rows, columns, 3) float64 array of 0-255 values (`change`); the result is clipped to 0-255."""

    augmentation = "colour"          # its name in the allow-list

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        settings = self.draw()
        for image in self.get_images(subject):
            image.set_data(self._changed(image.data, settings))
        return subject

    def _changed(self, data: torch.Tensor, settings: Any) -> torch.Tensor:
        if data.shape[0] != 3:
            raise InputError(f"augmentation {self.augmentation} changes RGB colours; the image has {data.shape[0]} channel(s), "
                             "not 3. Use it for histology (RGB) models only.")
        rgb = np.moveaxis(data.numpy().astype(np.float64), 0, -1)
        changed = np.clip(self.change(rgb, settings), 0.0, WHITE)
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(changed, -1, 0), dtype=np.float32))

    def draw(self) -> Any:
        raise NotImplementedError

    def change(self, rgb: np.ndarray, settings: Any) -> np.ndarray:
        raise NotImplementedError


def _uniform(bounds: Pair, count: int = 1) -> np.ndarray:
    """`count` draws from [low, high] by torch's global generator (the loader's own random state)."""
    low, high = bounds
    return (low + (high - low) * torch.rand(count, dtype=torch.float64)).numpy()


class RandomHED(ColourTransform):
    """Stain jitter: the RGB image is unmixed into haematoxylin, eosin and DAB amounts with
    skimage's stain matrices (skimage.color.hed_from_rgb, as rgb2hed), each stain's amount is
    multiplied by its own factor drawn from `scale` and shifted by its own amount drawn from
    `shift`, and the stains are mixed back. Stain amounts are not clipped at 0 (rgb2hed clips), so a
    factor of 1 and a shift of 0 give the image back."""

    augmentation = "hed"

    def __init__(self, scale: Pair, shift: Pair, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale, self.shift = scale, shift
        self.args_names = ["scale", "shift"]

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        return _uniform(self.scale, 3), _uniform(self.shift, 3)

    def change(self, rgb: np.ndarray, settings: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        from skimage.color import hed_from_rgb, rgb_from_hed

        scale, shift = settings
        log_adjust = np.log(1e-6)
        stains = (np.log(np.maximum(rgb / WHITE, 1e-6)) / log_adjust) @ hed_from_rgb
        stains = stains * scale + shift
        return np.exp((stains * log_adjust) @ rgb_from_hed) * WHITE


class FactorTransform(ColourTransform):
    """A colour change by one factor per image, drawn from `factor` (low, high)."""

    def __init__(self, factor: Pair, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = factor
        self.args_names = ["factor"]

    def draw(self) -> float:
        return float(_uniform(self.factor)[0])


class RandomBrightness(FactorTransform):
    """Every channel multiplied by one factor drawn from `factor`."""

    augmentation = "brightness"

    def change(self, rgb: np.ndarray, settings: float) -> np.ndarray:
        return rgb * settings


class RandomContrast(FactorTransform):
    """Each pixel moved away from (factor > 1) or towards (< 1) the image's mean brightness, by one
    factor drawn from `factor`."""

    augmentation = "contrast"

    def change(self, rgb: np.ndarray, settings: float) -> np.ndarray:
        mean = float((rgb @ LUMA).mean())
        return mean + (rgb - mean) * settings


class RandomSaturation(FactorTransform):
    """Each pixel moved away from (factor > 1) or towards (< 1, 0 grey) its own grey level, by one
    factor drawn from `factor`."""

    augmentation = "saturation"

    def change(self, rgb: np.ndarray, settings: float) -> np.ndarray:
        grey = (rgb @ LUMA)[..., None]
        return grey + (rgb - grey) * settings


class RandomHue(ColourTransform):
    """The hue of every pixel turned by one shift drawn from `shift`, in turns of the colour wheel
    (1/3 turns red into green); saturation and value are kept."""

    augmentation = "hue"

    def __init__(self, shift: Pair, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shift = shift
        self.args_names = ["shift"]

    def draw(self) -> float:
        return float(_uniform(self.shift)[0])

    def change(self, rgb: np.ndarray, settings: float) -> np.ndarray:
        from skimage.color import hsv2rgb, rgb2hsv

        if settings == 0:
            return rgb
        hsv = rgb2hsv(np.clip(rgb / WHITE, 0.0, 1.0))
        hsv[..., 0] = (hsv[..., 0] + settings) % 1.0
        return hsv2rgb(hsv) * WHITE


# ---------------------------------------------------------------- builders (TorchIO axis i = our axis i)


def _flip(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    # `probability` is the chance that each listed axis is flipped, independently.
    return tio.RandomFlip(axes=tuple(p["axes"]), flip_probability=p["probability"], p=1)


def _rotate90(p: Mapping[str, Any], dimensions: int, keep_shape: bool = False) -> tio.Transform:
    return RandomRot90(axes=p["axes"], keep_shape=keep_shape, p=p["probability"])


def _affine(p: Mapping[str, Any], dimensions: int, label_fill: int = 0) -> tio.Transform:
    """Scaling, rotation and translation; the voxels moved in from outside take the image's minimum
    and the label `label_fill` (the background, or the class index of unannotated voxels)."""
    degrees = _pair(p["degrees"], _symmetric)
    rotation = degrees * 3 if dimensions == 3 else (0.0, 0.0, 0.0, 0.0) + degrees
    return tio.RandomAffine(
        scales=_per_axis(_pair(p["scales"], _around_one), dimensions, 1.0),
        degrees=rotation,
        translation=_per_axis(_pair(p["translation"], _symmetric), dimensions, 0.0),
        default_pad_value="minimum", default_pad_label=label_fill, label_interpolation="nearest", p=p["probability"],
    )


def _elastic(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    displacement = float(p["max_displacement"])
    return tio.RandomElasticDeformation(
        num_control_points=int(p["control_points"]),
        max_displacement=(displacement, displacement, displacement if dimensions == 3 else 0.0),
        label_interpolation="nearest", p=p["probability"],
    )


def _anisotropy(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    downsampling = _pair(p["downsampling"], lambda x: (1.0, x))
    return tio.RandomAnisotropy(axes=tuple(p["axes"]), downsampling=downsampling, p=p["probability"])


def _blur(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    return tio.RandomBlur(std=_per_axis(_pair(p["std"], _from_zero), dimensions, 0.0), p=p["probability"])


def _noise(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    mean = _pair(p["mean"], lambda x: (x, x))  # a single number is the mean itself
    return tio.RandomNoise(mean=mean, std=_pair(p["std"], _from_zero), p=p["probability"])


def _gamma(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    return tio.RandomGamma(log_gamma=_pair(p["log_gamma"], _symmetric), p=p["probability"])


def _bias_field(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    return tio.RandomBiasField(coefficients=_pair(p["coefficients"], _symmetric), order=int(p["order"]),
                               p=p["probability"])


def _motion(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    return tio.RandomMotion(
        degrees=_pair(p["degrees"], _symmetric), translation=_pair(p["translation"], _symmetric),
        num_transforms=int(p["transforms"]), p=p["probability"],
    )


def _ghosting(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    return tio.RandomGhosting(
        num_ghosts=_as_tuple(p["num_ghosts"]), axes=tuple(range(dimensions)),
        intensity=_as_tuple(p["intensity"]), p=p["probability"],
    )


def _spike(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    return tio.RandomSpike(num_spikes=_as_tuple(p["num_spikes"]), intensity=_as_tuple(p["intensity"]),
                           p=p["probability"])


def _hed(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    return RandomHED(scale=_pair(p["scale"], _around_one), shift=_pair(p["shift"], _symmetric), p=p["probability"])


def _brightness(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    return RandomBrightness(factor=_pair(p["factor"], _around_one), p=p["probability"])


def _contrast(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    return RandomContrast(factor=_pair(p["factor"], _around_one), p=p["probability"])


def _saturation(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    return RandomSaturation(factor=_pair(p["factor"], _around_one), p=p["probability"])


def _hue(p: Mapping[str, Any], dimensions: int) -> tio.Transform:
    return RandomHue(shift=_pair(p["shift"], _symmetric), p=p["probability"])


_PROBABILITY = Param(_probability, None)
_ANY_RANGE = _number_or_range(0, None)
_NON_NEGATIVE = _number_or_range(0, 0)
# A factor: a number x in [0, 1) stands for [1 - x, 1 + x]; a range [min, max] with min >= 0.
_FACTOR = _number_or_range(0, 0, 1)

AUGMENTATIONS: Mapping[str, Augmentation] = {
    "flip": Augmentation({"probability": _PROBABILITY, "axes": Param(_axes(None), None)}, _flip),
    "rotate90": Augmentation({"probability": _PROBABILITY, "axes": Param(_axes(2), None)}, _rotate90),
    "affine": Augmentation({
        "probability": _PROBABILITY, "scales": Param(_scales, 0.1), "degrees": Param(_ANY_RANGE, 10),
        "translation": Param(_ANY_RANGE, 0),
    }, _affine),
    "elastic": Augmentation({
        "probability": _PROBABILITY, "control_points": Param(_int_at_least(5), 7),
        "max_displacement": Param(_non_negative_number, 7.5),
    }, _elastic),
    "anisotropy": Augmentation({
        "probability": _PROBABILITY, "downsampling": Param(_number_or_range(1, 1), [1.5, 4]),
        "axes": Param(_axes(None), None),
    }, _anisotropy),
    "hed": Augmentation({
        "probability": _PROBABILITY, "scale": Param(_scales, 0.05), "shift": Param(_ANY_RANGE, 0.005),
    }, _hed),
    "brightness": Augmentation({"probability": _PROBABILITY, "factor": Param(_FACTOR, 0.1)}, _brightness),
    "contrast": Augmentation({"probability": _PROBABILITY, "factor": Param(_FACTOR, 0.1)}, _contrast),
    "saturation": Augmentation({"probability": _PROBABILITY, "factor": Param(_FACTOR, 0.1)}, _saturation),
    "hue": Augmentation({"probability": _PROBABILITY, "shift": Param(_hue_shift, 0.02)}, _hue),
    "blur": Augmentation({"probability": _PROBABILITY, "std": Param(_NON_NEGATIVE, [0, 1])}, _blur),
    "noise": Augmentation({
        "probability": _PROBABILITY, "std": Param(_NON_NEGATIVE, 0.1), "mean": Param(_number_or_range(-math.inf, None), 0),
    }, _noise),
    "gamma": Augmentation({"probability": _PROBABILITY, "log_gamma": Param(_ANY_RANGE, 0.3)}, _gamma),
    "bias_field": Augmentation({
        "probability": _PROBABILITY, "coefficients": Param(_ANY_RANGE, 0.5), "order": Param(_int_at_least(0), 3),
    }, _bias_field),
    "motion": Augmentation({
        "probability": _PROBABILITY, "degrees": Param(_ANY_RANGE, 10), "translation": Param(_ANY_RANGE, 10),
        "transforms": Param(_int_at_least(1), 2),
    }, _motion),
    "ghosting": Augmentation({
        "probability": _PROBABILITY, "num_ghosts": Param(_int_or_range, [4, 10]),
        "intensity": Param(_NON_NEGATIVE, [0.5, 1]),
    }, _ghosting),
    "spike": Augmentation({
        "probability": _PROBABILITY, "num_spikes": Param(_int_or_range, 1),
        "intensity": Param(_ANY_RANGE, [1, 3]),
    }, _spike),
}


# The augmentations that change the colours of RGB images: histology models only.
COLOUR_AUGMENTATIONS = ("hed", "brightness", "contrast", "saturation", "hue")


def _default(name: str, key: str, dimensions: int) -> Any:
    if key == "axes":
        return [dimensions - 2, dimensions - 1] if name == "rotate90" else list(range(dimensions))
    return AUGMENTATIONS[name].params[key].default


# ---------------------------------------------------------------- validation and building


def _located_problems(name: str, params: Any, dimensions: int) -> list[tuple[str, str]]:
    """(key, problem) pairs for one configured augmentation; key "" means the entry as a whole."""
    if name not in AUGMENTATIONS:
        return [("", f"unknown augmentation {name!r}; known ones are {', '.join(AUGMENTATIONS)}")]
    if not isinstance(params, Mapping):
        return [("", f"must be a mapping of parameters such as {{probability: 0.5}}, got {params!r}")]
    known = AUGMENTATIONS[name].params
    found = [(str(k), f"unknown parameter; known ones are {', '.join(known)}") for k in params if k not in known]
    if "probability" not in params:
        found.append(("probability", "missing; give the chance (0 to 1) that the transform is applied"))
    for key, value in params.items():
        if key not in known:
            continue
        problem = "must not be null; leave the key out for its default" if value is None else known[key].check(value, dimensions)
        if problem:
            found.append((str(key), problem))
    return found


def check_augmentation(name: str, params: object, dimensions: int = 3) -> list[str]:
    """Problems of one configured augmentation, each "key: what is wrong" (no key when the whole entry is wrong)."""
    return [f"{key}: {what}" if key else what for key, what in _located_problems(name, params, dimensions)]


def augmentation_problems(config: Any, where: str, dimensions: int) -> list[tuple[str, str]]:
    """(location, problem) pairs for a whole `augmentation` section found at `where` (e.g. "augmentation")."""
    if config is None:
        return []
    if not isinstance(config, Mapping):
        return [(where, f"must be a mapping of augmentation names to parameters, got {config!r}")]
    found: list[tuple[str, str]] = []
    for name, params in config.items():
        base = f"{where}.{name}"
        found += [(f"{base}.{key}" if key else base, what) for key, what in _located_problems(str(name), params, dimensions)]
    return found


def resolved_augmentation(name: str, params: Mapping[str, Any], dimensions: int) -> dict[str, Any]:
    """Every parameter of the augmentation `name`: its configured value, or its default for `dimensions`."""
    keys = AUGMENTATIONS[name].params
    return {key: params[key] if key in params else _default(name, key, dimensions) for key in keys}


def build_augmentation(config: Mapping[str, Mapping[str, Any]] | None, dimensions: int, *,
                       keep_shape: bool = False, label_fill: int = 0) -> tio.Transform | None:
    """A `tio.Compose` of the configured augmentations in allow-list order; None when none is configured.

    `keep_shape` keeps every output the shape of its input (rotate90 turns a non-square plane by
    180 degrees only): needed where whole images are batched together. `label_fill` is the label
    of the voxels an affine moves in from outside the image.
    """
    if dimensions not in (2, 3):
        raise InputError(f"dimensions must be 2 or 3, got {dimensions!r}")
    problems = augmentation_problems(config, "augmentation", dimensions)
    if problems:
        raise InputError("invalid augmentation: " + "; ".join(f"{where}: {what}" for where, what in problems)
                         + "; fix the config's augmentation section.")
    if not config:
        return None
    transforms = [_build_one(name, config[name], dimensions, keep_shape, label_fill)
                  for name in AUGMENTATIONS if name in config]
    return tio.Compose(transforms)


def _build_one(name: str, params: Mapping[str, Any], dimensions: int, keep_shape: bool,
               label_fill: int = 0) -> tio.Transform:
    resolved = resolved_augmentation(name, params, dimensions)
    if name == "rotate90":
        return _rotate90(resolved, dimensions, keep_shape)
    if name == "affine":
        return _affine(resolved, dimensions, label_fill)
    return AUGMENTATIONS[name].build(resolved, dimensions)
