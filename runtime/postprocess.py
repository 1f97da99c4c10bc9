"""Turning a model's raw output into probabilities, label maps and values, as the manifest says."""
from __future__ import annotations

import numpy as np

from runtime.contract import ClassSpec
from runtime.errors import ModelError
from runtime.manifest import Manifest
from runtime.parallel import in_slabs

# A raw value so far below the others that softmax/sigmoid turn it into exactly 0 in float32.
_FAR_BELOW = -1e4
# Slabs of the first spatial axis that activation and argmax work through, and the smallest
# array worth splitting.
_SLAB_ROWS = 8
_SLAB_MIN_SIZE = 1 << 20


def output_channels(task: str, activation: str, label_rule: str, classes: int) -> int:
    """How many output channels a model returns: one per class, or, for a sigmoid read by
    threshold (every sigmoid segmentation model, and a graph that ends in its own sigmoid, read by
    threshold with no activation), one per class after the first (the background or negative
    class is where no channel exceeds the threshold)."""
    if task != "regression" and activation in ("sigmoid", "none") and label_rule == "threshold":
        return classes - 1
    return classes


def accepted_channels(task: str, activation: str, label_rule: str, classes: int) -> tuple[int, ...]:
    """The output channel counts a model may return: `output_channels`, and for a classifier read
    by sigmoid and threshold one per class as well (as such classifiers were packaged at first; the
    threshold reads the channels of the classes after the first either way)."""
    preferred = output_channels(task, activation, label_rule, classes)
    if task == "classification" and preferred == classes - 1:
        return preferred, classes
    return (preferred,)


def manifest_channels(manifest: Manifest) -> tuple[int, ...]:
    """`accepted_channels` for the model `manifest` describes."""
    output = manifest.output
    return accepted_channels(manifest.task, output.activation, output.label_rule, len(manifest.classes))


def expected_channels(manifest: Manifest) -> int:
    """How many output channels the model returns (`output_channels`)."""
    output = manifest.output
    return output_channels(manifest.task, output.activation, output.label_rule, len(manifest.classes))


def scored_classes(manifest: Manifest, width: int) -> tuple:
    """The classes a classification model's `width` scores are, in order: every class, or every
    class after the first where it returns one score per class after the first."""
    return manifest.classes[len(manifest.classes) - width:]


def scored_values(values: np.ndarray, manifest: Manifest) -> list[tuple[ClassSpec, float]]:
    """Each class a model's `values` (K,) score, with its value: a classifier's classes in output
    order (`scored_classes`); a regression model's targets by their value, the index of their
    output, where their values are 0 to K-1, else in the order listed (one target of value 1, as a
    training config may name it, is the model's one output)."""
    if manifest.task == "regression":
        by_value = sorted(spec.value for spec in manifest.classes) == list(range(len(values)))
        return [(spec, float(values[spec.value if by_value else place])) for place, spec in enumerate(manifest.classes)]
    return [(spec, float(value)) for spec, value in zip(scored_classes(manifest, len(values)), values)]


def predicted_class(scores: np.ndarray, manifest: Manifest) -> int:
    """The class value a classification model's activated scores (K,) predict, by its label rule."""
    return int(manifest.classes[int(label_index(scores[:, np.newaxis], manifest)[0])].value)


def background_raw(manifest: Manifest) -> np.ndarray:
    """The raw output that the activation maps onto the background probabilities."""
    k = expected_channels(manifest)
    if manifest.output.activation == "none":
        return background_probability(manifest)
    raw = np.full(k, _FAR_BELOW, dtype=np.float32)
    if manifest.output.activation == "softmax":
        raw[0] = 0.0
    return raw


def background_probability(manifest: Manifest) -> np.ndarray:
    """What the output holds where no window reached (outside a crop, say): the background's
    probabilities, or, for logits activated once brought back (output.probabilities), logits that
    the activation makes the background's."""
    k = expected_channels(manifest)
    if manifest.output.probabilities is not None:
        logits = np.full(k, _FAR_BELOW, dtype=np.float32)
        if manifest.output.probabilities == "softmax":
            logits[0] = 0.0
        return logits
    prob = np.zeros(k, dtype=np.float32)
    if manifest.output.activation != "sigmoid" and manifest.output.label_rule != "threshold":
        prob[0] = 1.0
    return prob


def brought_back(output: np.ndarray, manifest: Manifest) -> np.ndarray:
    """The probabilities of a segmentation's output on the scan's grid: logits activated now, in
    place, where the manifest says so (output.probabilities); other outputs as they are."""
    after = manifest.output.probabilities
    return output if after is None else activate(output, after)


def activate(raw: np.ndarray, activation: str, axis: int = 0) -> np.ndarray:
    """Softmax or sigmoid over the channel axis, in place on a float32 array.

    A channels-first map (axis 0) is worked through in slabs of its first spatial axis on a few
    threads: each slab stays in cache through every pass, and numpy releases the GIL.
    """
    if axis == 0 and raw.ndim > 1 and raw.size >= _SLAB_MIN_SIZE:
        in_slabs(lambda slab: _activate(raw[:, slab], activation, 0), raw.shape[1], _SLAB_ROWS)
        return raw
    return _activate(raw, activation, axis)


def _activate(raw: np.ndarray, activation: str, axis: int) -> np.ndarray:
    if activation == "softmax":
        raw -= raw.max(axis=axis, keepdims=True)
        np.exp(raw, out=raw)
        raw /= raw.sum(axis=axis, keepdims=True)
    elif activation == "sigmoid":
        np.negative(raw, out=raw)
        with np.errstate(over="ignore"):    # a far-below raw value: exp is inf, its sigmoid exactly 0
            np.exp(raw, out=raw)
        raw += 1.0
        np.reciprocal(raw, out=raw)
    return raw


def check_output(batch_out: np.ndarray, batch_in_shape: tuple[int, ...], manifest: Manifest) -> None:
    """The model returned the shape the manifest promises."""
    counts = manifest_channels(manifest)
    if manifest.task == "segmentation":
        shapes = [(batch_in_shape[0], k, *batch_in_shape[2:]) for k in counts]
    else:
        shapes = [(batch_in_shape[0], k) for k in counts]
    expected = " or ".join(str(shape) for shape in shapes)
    output = manifest.output
    if tuple(batch_out.shape) not in shapes and output.activation == "none" and output.label_rule == "threshold" \
            and batch_out.ndim > 1 and batch_out.shape[1] == len(manifest.classes):
        raise ModelError(
            f"model {manifest.name} v{manifest.version} returns one channel per class, but activation none read by "
            "threshold takes one per class after the first (as a sigmoid model; the version was packaged when it "
            "took one per class): package the graph again with output: {activation: none, label_rule: threshold} "
            "after dropping its first channel, or export its logits and use activation sigmoid.")
    if tuple(batch_out.shape) not in shapes:
        raise ModelError(
            f"model {manifest.name} v{manifest.version} returned an output of shape {tuple(batch_out.shape)} for an "
            f"input of shape {batch_in_shape}; its manifest promises {expected} ({len(manifest.classes)} classes, "
            f"activation {manifest.output.activation}). {_what_differs(tuple(batch_out.shape), shapes)}"
        )


def _what_differs(got: tuple[int, ...], shapes: list[tuple[int, ...]]) -> str:
    """Which axis of an output's shape breaks the promise, and what to do about it."""
    wanted = shapes[0]
    if len(got) != len(wanted):
        return "Its rank differs: the graph is not the one the manifest describes; re-export the model."
    if got[0] != wanted[0]:
        return (f"It keeps not the batch of {wanted[0]} window(s) it was given: export the graph with a free batch "
                "axis, or set window.batch_size to what it takes.")
    if got[2:] != wanted[2:]:
        return (f"Its spatial size {list(got[2:])} is not the window's {list(wanted[2:])}: a graph that downsamples, "
                "or a deep-supervision head; export its full-resolution output.")
    return "Fix the manifest's classes or re-export the model."


def label_map(probabilities: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Probabilities (K, *S) -> label values (*S), by the manifest's label rule (`label_index`)."""
    return class_values(label_index(probabilities, manifest), manifest)


def label_index(probabilities: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Probabilities (K, *S) -> class indices (*S), positions in manifest.classes, uint8 (uint16
    past 256 classes).

    argmax: the class with the highest probability. threshold: each foreground class whose channel
    exceeds the threshold, later classes winning where several do; the last len(classes) - 1
    channels are the foreground classes, in order.
    """
    if manifest.output.label_rule == "argmax":
        return channel_argmax(probabilities)
    classes = len(manifest.classes)
    index = np.zeros(probabilities.shape[1:], dtype=np.uint8 if classes <= 256 else np.uint16)
    first = probabilities.shape[0] - (classes - 1)
    for position in range(1, classes):
        index[probabilities[first + position - 1] > manifest.output.threshold] = position
    return index


def class_values(index: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Class indices (positions in manifest.classes) -> the classes' label values, uint8 or uint16."""
    values = np.array([c.value for c in manifest.classes])
    dtype = np.uint8 if values.max() < 256 else np.uint16
    if np.array_equal(values, np.arange(len(values))):
        return index.astype(dtype, copy=False)
    return np.take(values.astype(dtype), index)


def channel_argmax(values: np.ndarray) -> np.ndarray:
    """Index (*S) of the largest of values (K, *S) along the channel axis, the first on ties.

    The same as np.argmax(values, axis=0), as uint8 (uint16 past 256 channels), but computed
    channel by channel over slabs of the first spatial axis on a few threads (np.argmax over the
    first axis walks the array with a stride of one channel, on one thread).
    """
    index = np.empty(values.shape[1:], dtype=np.uint8 if values.shape[0] <= 256 else np.uint16)
    if values.ndim == 1:
        index[...] = np.argmax(values)
        return index

    def slab_argmax(slab: slice) -> None:
        part, out = values[:, slab], index[slab]
        best = part[0].copy()
        out.fill(0)
        for channel in range(1, part.shape[0]):
            larger = np.greater(part[channel], best)
            out[larger] = channel
            np.maximum(best, part[channel], out=best)

    in_slabs(slab_argmax, values.shape[1], _SLAB_ROWS)
    return index
