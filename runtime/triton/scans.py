"""A scan run whole by a served model: one request of its voxels, spacing and orientation, and the
answer held to the scan and to the version's manifest before it becomes a Prediction. What `runtime
predict SCAN --server` writes, and what the PACS node (`runtime listen --server`) turns into a SEG
or an SR."""
from __future__ import annotations

import numpy as np

from runtime.errors import ModelError
from runtime.io import Scan
from runtime.manifest import Manifest
from runtime.predict import Prediction, check_scan, scored_slices
from runtime.triton.adapter import LABELS, PROBABILITIES, SCORES
from runtime.triton.client import ServedModel


class ServedScans:
    """A served version, pinned with its manifest, that runs whole scans: a segmentation's labels,
    or a classifier's or regression model's scores. Each scan is sent on a connection of its own,
    closed once it is answered: an HTTP client serves only the thread that made it, and a node
    that holds a connection open while idle keeps the server from stopping (Triton waits for its
    open connections). Before each scan the server is asked whether the version is ready
    (ServerUnavailable where it is not, or cannot be reached)."""

    def __init__(self, served: ServedModel, manifest: Manifest) -> None:
        expected = LABELS if manifest.task == "segmentation" else SCORES
        if expected not in served.outputs:
            raise ModelError(f"{served.model} version {served.version} at {served.server} is a {manifest.task} model by "
                             f"its manifest but answers no {expected} (its outputs: {', '.join(served.outputs)}); "
                             "check that the server runs this runtime's model.py.")
        self.served, self.manifest = served, manifest

    def predict(self, scan: Scan) -> Prediction:
        connection = self.served.connect()
        try:
            connection.check_ready()
            return served_prediction(connection, self.manifest, scan, labels=True, probabilities=False)
        finally:
            connection.close()


def served_prediction(served: ServedModel, manifest: Manifest | None, scan: Scan, labels: bool,
                      probabilities: bool) -> Prediction:
    """The served model's answer for `scan`, run whole: a segmentation's maps asked for (`labels`,
    `probabilities`), or a classifier's or regression model's scores, held to the scan and the
    manifest (ModelError where they do not fit). The scan is held to the manifest first, as a local
    run holds it; a volume given to a 2D model goes slice by slice (`_slice_by_slice`)."""
    segmentation = LABELS in served.outputs
    wanted = [name for name, asked in ((LABELS, labels), (PROBABILITIES, probabilities)) if asked] \
        if segmentation else [SCORES]
    if manifest is not None:
        check_scan(manifest, scan)
        if manifest.dimensions == 2 and scan.spatial_dims == 3:
            return _slice_by_slice(served, manifest, scan, wanted, segmentation)
    answer = served.infer(scan.array_zyx, scan.spacing_zyx, wanted, scan.reference.GetOrigin(),
                          scan.reference.GetDirection())
    return _prediction(answer, scan.array_zyx.shape[1:], served, manifest, segmentation)


def _prediction(answer: dict[str, np.ndarray], shape: tuple[int, ...], served: ServedModel,
                manifest: Manifest | None, segmentation: bool) -> Prediction:
    if segmentation:
        maps = checked(answer, shape, served.model)
        return Prediction(probabilities_zyx=maps.get(PROBABILITIES), labels_zyx=maps.get(LABELS))
    return scored(answer, manifest, served.model)


def _slice_by_slice(served: ServedModel, manifest: Manifest, scan: Scan, wanted: list[str],
                    segmentation: bool) -> Prediction:
    """A 2D model's answer for a volume, made as a local run makes it (runtime.predict): each
    axial slice sent on its own (the served config takes 2D images); a segmentation's maps stacked
    along z, a classifier's or regression model's scores the mean over its `scored_slices`."""
    from runtime.postprocess import predicted_class

    answers = []
    slices = range(scan.array_zyx.shape[1]) if segmentation else scored_slices(scan.array_zyx, manifest)
    for index in slices:
        plane = scan.array_zyx[:, index]
        answer = served.infer(plane, scan.spacing_zyx[1:], wanted)
        answers.append(_prediction(answer, plane.shape[1:], served, manifest, segmentation))
    if segmentation:
        maps = {name: None if getattr(answers[0], name) is None else
                np.stack([getattr(answer, name) for answer in answers], axis=-3)
                for name in ("probabilities_zyx", "labels_zyx")}
        return Prediction(**maps)
    scores = np.mean([answer.scores for answer in answers], axis=0).astype(np.float32)
    return Prediction(scores=scores, label=predicted_class(scores, manifest) if manifest.task == "classification"
                      else None)


def scored(answer: dict[str, np.ndarray], manifest: Manifest, model: str) -> Prediction:
    """A classifier's or regression model's answer as a prediction: its SCORES held to what the
    manifest makes of them (finite, as many as its output gives; probabilities in [0, 1] where
    its activation makes them), and a classifier's class by its label rule; ModelError otherwise."""
    from runtime.postprocess import manifest_channels, predicted_class

    scores = answer.get(SCORES)
    widths = manifest_channels(manifest)
    probabilities = manifest.task == "classification" and manifest.output.activation in ("softmax", "sigmoid")
    fits = (scores is not None and scores.dtype == np.float32 and scores.ndim == 1 and scores.size in widths
            and bool(np.isfinite(scores).all()) and (not probabilities or 0 <= scores.min() <= scores.max() <= 1))
    if not fits:
        found = "none" if scores is None else f"{scores.dtype} {scores.shape}"
        raise ModelError(f"the server's answer for {model} does not fit its {manifest.task} manifest: {SCORES} "
                         f"{found}, expected float32 ({' or '.join(map(str, widths))},), finite"
                         f"{', in [0, 1]' if probabilities else ''}; check that the server runs this runtime's "
                         "model.py.")
    scores = np.ascontiguousarray(scores)
    label = predicted_class(scores, manifest) if manifest.task == "classification" else None
    return Prediction(scores=scores, label=label)


def checked(answer: dict[str, np.ndarray], shape: tuple[int, ...], model: str) -> dict[str, np.ndarray]:
    """The server's arrays held to what a segmentation returns for a scan of spatial `shape`:
    LABELS unsigned integers (*shape), PROBABILITIES float32 (K, *shape) in [0, 1]; ModelError
    otherwise (a server that answers otherwise is not running this runtime's model.py)."""
    problems = []
    labels = answer.get(LABELS)
    if labels is not None and (labels.dtype not in (np.uint8, np.uint16) or labels.shape != shape):
        problems.append(f"{LABELS} {labels.dtype} {labels.shape}, expected uint8/uint16 {shape}")
    probabilities = answer.get(PROBABILITIES)
    if probabilities is not None:
        if probabilities.dtype != np.float32 or probabilities.ndim != len(shape) + 1 or probabilities.shape[1:] != shape:
            problems.append(f"{PROBABILITIES} {probabilities.dtype} {probabilities.shape}, expected float32 (K, *{shape})")
        elif not (np.isfinite(probabilities).all() and probabilities.min() >= 0 and probabilities.max() <= 1):
            problems.append(f"{PROBABILITIES} outside [0, 1]")
    if problems:
        raise ModelError(f"the server's answer for {model} does not fit the scan: {'; '.join(problems)}.")
    return {name: np.ascontiguousarray(array) for name, array in answer.items()}
