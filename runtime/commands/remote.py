"""`runtime predict INPUT --server ...`: a scan or a slide read and written here, predicted by a
model that a Triton server serves (runtime.triton.client). The outputs are the ones a local run
writes: a scan goes to the server whole; a slide is planned, read and stitched here, and only its
tiles' batches go to the server, as do the windows of every row of a --csv run."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import click

from runtime.commands.single import (
    ScanOutputs, check_outputs, check_scan_outputs, check_series, dicom_sources, refuse_histology, write_outputs,
)
from runtime.commands.slide import refuse_slide_options
from runtime.errors import InputError, ManifestError
from runtime.io import read_scan
from runtime.manifest import WINDOWS_MODEL_SUFFIX, Manifest, check_digest_text
from runtime.predict import Model, Progress
from runtime.slide.predict import SlideOutputs
from runtime.triton.adapter import LABELS, MANIFEST_JSON, WINDOW_OUTPUTS
from runtime.triton.client import ServedBackend, ServedModel
from runtime.triton.scans import served_prediction


def run_remote(inputs: Sequence[Path], server: str, model: str, version: str | None, outputs: SlideOutputs,
               mpp: float | None, tissue_mask: Path | None, timeout: float, progress: Progress,
               expect_digest: str | None, scan_outputs: ScanOutputs, series_uid: str | None = None) -> None:
    """`runtime predict INPUT --server ...`: a slide cut into tiles here and run there (`outputs`),
    or a scan run whole by the server, its answers written here (`scan_outputs`)."""
    from runtime.slide.reader import is_slide_input

    check_digest_text(expect_digest)
    served = ServedModel(server, model, version, timeout)
    try:
        manifest = served_manifest(served, expect_digest)
        modality = manifest.modality if manifest is not None else "radiology"
        if len(inputs) == 1 and is_slide_input(Path(inputs[0]), modality):
            if manifest is None:
                raise InputError(f"{model} at {server} does not answer MANIFEST requests, which a slide needs; "
                                 "rebuild it with this runtime (python -m export build) and serve it again.")
            if scan_outputs.dicom or series_uid is not None:
                raise InputError("--dicom-seg, --dicom-sr and --series are for scans; a slide writes --output, "
                                 "--probabilities, --overlay and --geojson.")
            _run_slide(served, manifest, Path(inputs[0]), outputs, mpp, tissue_mask, progress)
        else:
            if manifest is not None:
                refuse_histology(manifest, inputs)
            refuse_slide_options({"--overlay": outputs.overlay, "--geojson": outputs.geojson, "--mpp": mpp,
                                  "--tissue-mask": tissue_mask}, [Path(i) for i in inputs])
            _run_scan(served, manifest, inputs, scan_outputs, series_uid)
    finally:
        served.close()
    click.echo(f"answered by {model} version {served.answered_version} at {server}")


def run_remote_csv(csv_path: Path, server: str, model: str, version: str | None, output_dir: Path,
                   save_probabilities: bool, timeout: float, progress: Progress,
                   expect_digest: str | None = None, default_mpp: float | None = None) -> None:
    """`runtime predict --csv ... --server ...`: every subject (scans) or slide of the CSV read,
    cut into windows and stitched here, the windows run by the served version, whose manifest
    is read first; the outputs and tables are a local run's."""
    from runtime.commands.slides import predict_slides, refuse_mpp_for_scans
    from runtime.commands.subjects import predict_subjects

    check_digest_text(expect_digest)
    served = ServedModel(server, model, version, timeout)
    try:
        manifest = served_manifest(served, expect_digest)
        if manifest is None:
            raise InputError(f"{model} at {server} does not answer MANIFEST requests, which a --csv run needs; "
                             "rebuild it with this runtime (python -m export build) and serve it again.")
        if manifest.window.mode != "sliding":
            raise InputError(f"model {manifest.name} takes whole images (window.mode whole); a --csv run over "
                             "--server sends windows, so run this model's CSV locally (--model FOLDER).")

        def open_model() -> Model:
            return Model(manifest, None, ServedBackend(served))

        if manifest.modality == "histology":
            predict_slides(csv_path, manifest, open_model, output_dir, save_probabilities, progress, default_mpp)
        else:
            refuse_mpp_for_scans(default_mpp, manifest)
            predict_subjects(csv_path, manifest, open_model, output_dir, save_probabilities, progress)
    finally:
        served.close()
    click.echo(f"answered by {model} version {served.answered_version} at {server}")


def served_manifest(served: ServedModel, expect_digest: str | None) -> Manifest | None:
    """The manifest of the version that will answer (every later request is sent to it), held to
    `expect_digest`; None for a model whose model.py predates MANIFEST requests, when no digest
    is expected."""
    if served.model.endswith(WINDOWS_MODEL_SUFFIX) and served.outputs == [WINDOW_OUTPUTS]:
        model = served.model[: -len(WINDOWS_MODEL_SUFFIX)]
        raise InputError(f"{served.model} serves the windows of model {model} to its clients; give --model {model}.")
    if MANIFEST_JSON not in served.outputs:
        if expect_digest is not None:
            raise InputError(f"{served.model} does not answer MANIFEST requests, so its digest cannot be checked; "
                             "rebuild it with this runtime (python -m export build) and serve it again.")
        return None
    manifest, digest = served.manifest()
    if expect_digest is not None and digest != expect_digest:
        raise ManifestError(
            f"{served.model} version {served.version} at the server has digest {digest}, but {expect_digest} is "
            "expected: this is not the pinned version. Serve the version the digest was taken from, or review "
            "this version and pin its digest.")
    return manifest


def _run_slide(served: ServedModel, manifest: Manifest, path: Path, outputs: SlideOutputs,
               mpp: float | None, tissue_mask: Path | None, progress: Progress) -> None:
    from runtime.commands.slide import check_outputs, predict_and_write
    from runtime.slide.predict import check_slide_model

    check_slide_model(manifest, path)
    check_outputs(outputs, [path, *([tissue_mask] if tissue_mask else [])], manifest.task)
    predict_and_write(Model(manifest, None, ServedBackend(served)), path, outputs, mpp, tissue_mask, progress)


def _run_scan(served: ServedModel, manifest: Manifest | None, inputs: Sequence[Path], outputs: ScanOutputs,
              series_uid: str | None = None) -> None:
    """One scan run whole by the server: a segmentation's maps, or a classifier's or regression
    model's scores; written here as a local run writes them (DICOM objects included)."""
    if manifest is None and (outputs.dicom or LABELS not in served.outputs):
        raise InputError(f"{served.model} does not answer MANIFEST requests, which its classes need (for "
                         f"{'a DICOM object' if outputs.dicom else 'its scores'}); rebuild it with this runtime "
                         "(python -m export build) and serve it again.")
    if manifest is None:
        check_scan_outputs("segmentation", outputs.labels, outputs.probabilities, inputs)
    else:
        check_outputs(manifest, inputs, outputs)
    check_series(series_uid, inputs)
    scan = read_scan(inputs, series_uid=series_uid)
    sources = dicom_sources(scan, outputs) if outputs.dicom else None
    prediction = served_prediction(served, manifest, scan, labels=outputs.labels is not None or outputs.dicom,
                                   probabilities=outputs.wants_probabilities)
    write_outputs(prediction, manifest, scan, sources, outputs, Path(inputs[0]).name)
