"""One subject from files to files: read, predict, write atomically, print what was found."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import click
import numpy as np

from runtime.errors import InputError, MedflowError
from runtime.io import OutputSet, Scan, check_writable, read_mask, read_scan
from runtime.io.scan import Plan
from runtime.io.write import IMAGE_SUFFIXES, prepare_output_dir, refuse_overwrites
from runtime.manifest import Manifest, load_manifest
from runtime.metrics import significant
from runtime.commands.reporting import taken_version
from runtime.postprocess import scored_values
from runtime.predict import Prediction, Progress, load_model, predict_scan
from runtime.sizing import check_job


def refuse_histology(manifest: Manifest, inputs: Sequence[Path]) -> None:
    """InputError where a histology model is given a scan (it runs on one whole-slide image), or a
    model of scans a whole-slide image (a tiled TIFF pyramid)."""
    if manifest.modality == "histology":
        raise InputError(f"model {manifest.name} is a histology model and runs on one whole-slide image (.svs, .tif, "
                         f".ndpi, .mrxs, ... or a .png/.jpg), not on {', '.join(map(str, inputs))}.")
    from runtime.slide.reader import pyramid_levels

    for path in inputs:
        if levels := pyramid_levels(Path(path)):
            raise InputError(f"{path} is a whole-slide image (a tiled TIFF pyramid of {levels} levels), but model "
                             f"{manifest.name} is a {manifest.modality} model; run a histology model on slides.")


def check_scan_outputs(task: str, output: Path | None, probabilities: Path | None, inputs: Sequence[Path]) -> None:
    """--output and --probabilities of a scan: at least one for a segmentation, of a suffix it can
    be written as, none of them an input."""
    named = [(option, path) for option, path in (("--output", output), ("--probabilities", probabilities)) if path]
    refuse_overwrites(named, inputs)
    if task == "segmentation":
        if output is None and probabilities is None:
            raise InputError("give --output for the label map (and/or --probabilities for the class probabilities).")
        for option, path in (("--output", output), ("--probabilities", probabilities)):
            if path is not None:
                check_writable(path, IMAGE_SUFFIXES, option)
        return
    if probabilities is not None:
        raise InputError(f"--probabilities is for segmentation models; a {task} model writes its values with --output.")
    if output is not None:
        check_writable(output, (".csv",), "--output")


def job_plan(manifest: Manifest, probabilities: bool, inputs: Sequence[Path]) -> Plan:
    """The check `read_scan` runs once the headers are read: the job must fit the memory budget."""
    def plan(shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...], channels: int) -> None:
        check_job(manifest, shape_zyx, spacing_zyx, channels, probabilities and manifest.task == "segmentation",
                  ", ".join(map(str, inputs)))

    return plan


def score_row(prediction: Prediction, manifest: Manifest, subject: str) -> dict[str, object]:
    """One CSV row of a classification or regression prediction, its values to 9 significant digits
    (a float32 whole): a probability of 1e-12 is no 0, which would tie it with others for the AUC,
    nor a target of small units."""
    row: dict[str, object] = {"subject_id": subject}
    if prediction.label is not None:
        row["predicted"] = prediction.label
    prefix = "probability_" if prediction.label is not None else ""
    for spec, value in scored_values(prediction.scores, manifest) if prediction.scores is not None else ():
        row[f"{prefix}{spec.name}"] = significant(float(value))
    return row


def _check_dicom_seg(dicom_seg: Path, inputs: Sequence[Path], manifest: Manifest, output: Path | None,
                     probabilities: Path | None) -> None:
    from runtime.io.dicom_seg import SEG_SUFFIXES

    if manifest.task != "segmentation":
        raise InputError(f"--dicom-seg is for segmentation models; a {manifest.task} model writes its values with "
                         "--output.")
    _check_dicom_path("--dicom-seg", dicom_seg, SEG_SUFFIXES, "the SEG", inputs, manifest,
                      (("--output", output), ("--probabilities", probabilities)))


def _check_dicom_sr(dicom_sr: Path, inputs: Sequence[Path], manifest: Manifest, dicom_seg: Path | None,
                    others: Sequence[tuple[str, Path | None]]) -> None:
    from runtime.io.dicom_sr import SR_SUFFIXES

    if manifest.task == "segmentation" and dicom_seg is None:
        raise InputError("--dicom-sr of a segmentation model reports the volume of each segment of its DICOM SEG: "
                         "give --dicom-seg too.")
    _check_dicom_path("--dicom-sr", dicom_sr, SR_SUFFIXES, "the report", inputs, manifest, others)


def _check_dicom_path(option: str, path: Path, suffixes: Sequence[str], what: str, inputs: Sequence[Path],
                      manifest: Manifest, others: Sequence[tuple[str, Path | None]]) -> None:
    """A DICOM object `option` writes at `path`: of one DICOM series folder (`what` references its
    instances), with the dicom extra and class names DICOM can hold, never an input or another
    output, and writable with one of `suffixes`."""
    from runtime.io.dicom_seg import check_available

    missing = [str(path) for path in inputs if not Path(path).exists()]
    if missing:
        raise InputError(f"{missing[0]} does not exist; check the path.")
    if len(inputs) != 1 or not Path(inputs[0]).is_dir():
        raise InputError(f"{option} needs one DICOM series folder as the input: {what} references its instances.")
    check_available(manifest)
    refuse_overwrites([(option, path), *((name, other) for name, other in others if other)], inputs)
    check_writable(path, suffixes, option)


def unused_mask_warning(manifest: Manifest, given: str) -> str | None:
    """The warning for a mask given to a model whose preprocessing reads none: it changes nothing
    (it does not restrict where the model predicts); None where the model reads it."""
    from runtime.preprocess.steps import uses_mask

    if uses_mask(manifest.preprocessing):
        return None
    return (f"warning: {given}: model {manifest.name}'s preprocessing has no step with region: mask, so the mask "
            "changes nothing (it does not restrict where the model predicts)")


@dataclass(frozen=True)
class ScanOutputs:
    """What a run on one scan writes: the label map (or a classifier's or regression model's
    one-row CSV), the probabilities, a DICOM SEG (fractional or not) and a DICOM SR."""

    labels: Path | None = None
    probabilities: Path | None = None
    dicom_seg: Path | None = None
    fractional: bool = False
    dicom_sr: Path | None = None
    uid_root: str | None = None             # the root of the SEG's and SR's new UIDs (--uid-root)

    @property
    def dicom(self) -> bool:
        """Whether a DICOM object is written, which references the series' instances."""
        return self.dicom_seg is not None or self.dicom_sr is not None

    @property
    def wants_probabilities(self) -> bool:
        return self.probabilities is not None or self.fractional


def check_outputs(manifest: Manifest, inputs: Sequence[Path], outputs: ScanOutputs,
                  mask: Path | None = None) -> None:
    """InputError, before any work, for outputs the model cannot give or that cannot be written."""
    output, probabilities = outputs.labels, outputs.probabilities
    if outputs.dicom_seg is not None:
        _check_dicom_seg(outputs.dicom_seg, inputs, manifest, output, probabilities)
    if outputs.dicom_sr is not None:
        _check_dicom_sr(outputs.dicom_sr, inputs, manifest, outputs.dicom_seg,
                        (("--output", output), ("--probabilities", probabilities), ("--dicom-seg", outputs.dicom_seg)))
    if outputs.fractional and outputs.dicom_sr is not None:
        raise InputError("--dicom-sr states the volume of each segment of a binary SEG; a fractional SEG holds "
                         "probabilities, not that segment: leave out --fractional (and write --probabilities).")
    if outputs.fractional and manifest.output.probabilities == "sigmoid" and len(manifest.classes) > 2:
        raise InputError(f"model {manifest.name}'s probabilities are each region's sigmoid (output.probabilities "
                         "sigmoid), where its classes are what is left of each region once the later ones are "
                         "painted over it, so a fractional segment would hold more than its class; write the binary "
                         "SEG (leave out --fractional), and each region's probability with --probabilities.")
    if not outputs.dicom or output is not None or probabilities is not None:
        check_scan_outputs(manifest.task, output, probabilities, [*inputs, *([mask] if mask else [])])


def run_one(inputs: Sequence[Path], model_path: Path, outputs: ScanOutputs, mask: Path | None, device: str,
            threads: int | None, progress: Progress, expect_digest: str | None = None,
            series_uid: str | None = None, strict_input: bool = False) -> Prediction:
    manifest, version_dir = taken_version(model_path, expect_digest)
    refuse_histology(manifest, inputs)
    check_outputs(manifest, inputs, outputs, mask)
    model = load_model(version_dir, device=device, threads=threads)
    check_series(series_uid, inputs)
    scan = read_scan(inputs, plan=job_plan(manifest, outputs.wants_probabilities, inputs), series_uid=series_uid)
    sources = dicom_sources(scan, outputs) if outputs.dicom else None
    mask_zyx = read_mask(mask, scan) if mask is not None else None
    if mask is not None and (warning := unused_mask_warning(manifest, f"--mask {mask}")) is not None:
        click.echo(warning, err=True)
    prediction = predict_scan(model, scan, mask_zyx, progress, probabilities=outputs.wants_probabilities,
                              overwrite=True, strict_input=strict_input)
    progress.close()
    write_outputs(prediction, manifest, scan, sources, outputs, Path(inputs[0]).name)
    return prediction


def check_series(series_uid: str | None, inputs: Sequence[Path]) -> None:
    """InputError for --series given with an input that is no DICOM folder."""
    if series_uid is not None and not all(Path(path).is_dir() for path in inputs):
        raise InputError("--series chooses a series of a DICOM folder; every input must then be a DICOM folder.")


def write_outputs(prediction: Prediction, manifest: Manifest | None, scan: Scan, sources: list | None,
                  outputs: ScanOutputs, subject: str) -> None:
    """Write what `outputs` names of a prediction on `scan` (all or nothing), print a classifier's
    or regression model's values, and say what was written. `sources`: the series' instances,
    for the DICOM objects; `manifest` may be None only where none is written and no values are."""
    with OutputSet() as written:
        if prediction.labels_zyx is not None and outputs.labels is not None:
            written.image(prediction.labels_zyx, scan.reference, outputs.labels, scan.placement)
        if prediction.probabilities_zyx is not None and outputs.probabilities is not None:
            written.image(prediction.probabilities_zyx, scan.reference, outputs.probabilities,
                          scan.placement)
        with _or_write_output():
            revised = _stage_dicom(written, prediction, manifest, scan, sources, outputs)
        if prediction.scores is not None:
            row = score_row(prediction, manifest, subject)
            names = {spec.value: spec.name for spec in manifest.classes}
            click.echo(", ".join(f"{k}={v} ({names[v]})" if k == "predicted" and v in names else f"{k}={v}"
                                 for k, v in row.items()))
            if outputs.labels is not None:
                written.table([row], list(row), outputs.labels)
    for path in (outputs.labels, outputs.probabilities, outputs.dicom_seg, outputs.dicom_sr):
        if path is not None:
            click.echo(f"wrote {path}")
    for line in filter(None, revised):
        click.echo(line)


def _stage_dicom(written: OutputSet, prediction: Prediction, manifest: Manifest | None, scan: Scan,
                 sources: list | None, outputs: ScanOutputs) -> list[str | None]:
    """Stage the DICOM SEG and SR `outputs` names, each the next revision of the one it replaces
    at its path (`runtime.io.dicom_seg.replaced_at`); the lines saying so."""
    if outputs.dicom_seg is None and outputs.dicom_sr is None:
        return []
    from runtime.io.dicom_seg import replaced_at

    revised: list[str | None] = []
    seg = None
    if outputs.dicom_seg is not None:
        from runtime.io.dicom_seg import SEGMENTATION_STORAGE, SERIES_NUMBER, build_seg

        maps = prediction.probabilities_zyx if outputs.fractional else None
        revision, _ = replaced_at(outputs.dicom_seg, sources, SEGMENTATION_STORAGE, SERIES_NUMBER, manifest.name)
        seg = build_seg(prediction.labels_zyx, sources, manifest, maps, revision, outputs.uid_root)
        written.file(outputs.dicom_seg, seg.save_as)
        revised.append(_revision("--dicom-seg", outputs.dicom_seg, revision, SERIES_NUMBER, "SEG"))
    if outputs.dicom_sr is not None:
        from runtime.io.dicom_sr import COMPREHENSIVE_SR, SERIES_NUMBER as REPORTS, findings_of, write_sr

        found = findings_of(prediction, manifest, scan.reference.GetSpacing(), seg)
        revision, previous = replaced_at(outputs.dicom_sr, sources, COMPREHENSIVE_SR, REPORTS, manifest.name)
        written.file(outputs.dicom_sr, lambda tmp: write_sr(tmp, sources, manifest, found, revision, previous,
                                                            outputs.uid_root))
        revised.append(_revision("--dicom-sr", outputs.dicom_sr, revision, REPORTS, "report, named as its predecessor"))
    return revised


def _revision(option: str, path: Path, revision: int, first_number: int, replaced: str) -> str | None:
    """The line saying that the DICOM object written at `path` revises the one it replaced there."""
    if revision == 1:
        return None
    return f"{option} {path}: revision {revision} (series {first_number + revision - 1}) of the {replaced}"


def dicom_sources(scan: Scan, outputs: ScanOutputs) -> list:
    """The series' instances, checked before any inference (a series the SEG or SR cannot reference
    is refused first): in slice order, each on its slice, for a SEG; as they are for an SR alone,
    which asks no frame of reference or position of them (a radiograph has none)."""
    from runtime.io.dicom_seg import referenced_instances

    with _or_write_output():
        return referenced_instances(list(scan.series_files), scan.reference, outputs.dicom_seg is not None)


@contextmanager
def _or_write_output() -> Iterator[None]:
    """A SEG or SR refused on this series, with a label map offered beside the remedy."""
    from runtime.io.dicom_seg import DicomObjectError

    try:
        yield
    except DicomObjectError as error:
        raise error.or_instead("write --output instead") from None


DEMO_MODEL = Path("model_repository") / "demo_bright_structures"
DEMO_SLIDE_MODEL = Path("model_repository") / "demo_stain_regions"


def demo_model(model_path: Path | None, default: Path = DEMO_MODEL) -> Path:
    """The model `runtime demo` runs: the one given, else the demo model of the source tree, in the
    working folder or beside this package (a checkout, whatever the working folder)."""
    if model_path is not None:
        return model_path
    beside = Path(__file__).resolve().parents[2] / default
    for candidate in (default, beside):
        if candidate.is_dir():
            return candidate
    raise InputError(f"the demo model {default} comes with the source tree, not with an installed package; "
                     "run `runtime demo` from the repository root, or pass --model.")


def run_demo(output_dir: Path, model_path: Path | None, device: str) -> None:
    """The scan demo and the slide demo with the embedded models; with --model, the one of its
    modality. The models are found (or refused) before the output folder is made; the last lines
    say how to run each model on a scan or slide of one's own."""
    if model_path is None:
        scan_model, slide_model = demo_model(None), demo_model(None, DEMO_SLIDE_MODEL)
    else:
        manifest = load_manifest(model_path, verify=False)[0]
        if manifest.task != "segmentation":
            kind = "slide.svs" if manifest.modality == "histology" else "scan.nii.gz"
            raise InputError(f"--model {model_path}: a {manifest.task} model, and the demo scores a segmentation "
                             f"against its phantom's truth; run it with `runtime predict {kind} --model {model_path}`.")
        scan_model, slide_model = (None, model_path) if manifest.modality == "histology" else (model_path, None)
    prepare_output_dir(output_dir)
    if scan_model is not None:
        run_scan_demo(output_dir, scan_model, device)
    if slide_model is not None:
        run_slide_demo(output_dir, slide_model, device)
    if scan_model is not None:
        click.echo(f"next, a scan of your own: runtime predict scan.nii.gz --model {scan_model} --output mask.nii.gz")
    if slide_model is not None:
        click.echo(f"next, a slide of your own: runtime predict slide.svs --model {slide_model} --output "
                   "slide_mask.tiff  # and --mpp where its file gives no resolution")


def run_slide_demo(output_dir: Path, model_path: Path, device: str) -> None:
    """Write the synthetic slide, run the slide model over it, and print the Dice of each tissue
    class against the slide's truth and where the outputs are."""
    import tifffile
    from PIL import Image

    from runtime.commands.demo import SLIDE_CLASSES, SLIDE_MPP, slide_phantom, write_slide
    from runtime.commands.slide import run_slide
    from runtime.metrics import dice
    from runtime.slide.predict import SlideOutputs

    image, truth = slide_phantom(2400, 3200)
    slide_spec = load_manifest(model_path, verify=False)[0].slide
    slide_mpp = min(SLIDE_MPP, slide_spec.mpp) if slide_spec is not None else SLIDE_MPP   # a 40x model's too
    slide_path = output_dir / "slide.tif"
    with OutputSet() as staged:        # renamed into place: a link already there is replaced, not written through
        staged.file(slide_path, lambda tmp: write_slide(tmp, image, mpp=slide_mpp))
        staged.file(output_dir / "slide_truth.png", lambda tmp: Image.fromarray(truth).save(tmp))
    outputs = SlideOutputs(labels=output_dir / "slide_labels.tif", overlay=output_dir / "slide_overlay.png",
                           geojson=output_dir / "slide_regions.geojson")
    started = time.perf_counter()
    slide_map = run_slide(slide_path, model_path, outputs, None, None, device, None, _Silent())
    elapsed = time.perf_counter() - started
    found = tifffile.imread(outputs.labels, key=0)
    expected = _truth_at(truth, found.shape, slide_map.mpp / slide_mpp)
    scored = [spec for spec in slide_map.manifest.classes[1:] if spec.name in SLIDE_CLASSES]
    scores = ", ".join(f"{spec.name} {dice(found == spec.value, expected == SLIDE_CLASSES[spec.name], True):.3f}"
                       for spec in scored)
    if not scored:
        scores = (f"none: the model's classes ({', '.join(c.name for c in slide_map.manifest.classes[1:])}) are not "
                  f"the slide's ({', '.join(SLIDE_CLASSES)})")
    click.echo(f"demo slide: segmented in {elapsed:.2f} s; Dice against the slide's truth: {scores}")
    if not _is_demo_model(model_path, DEMO_SLIDE_MODEL):
        click.echo("  (the slide's truth is its nuclei and stroma, which the demo model finds: another model's Dice "
                   "here says only that it ran, not how well it does what it was made for)")


def _truth_at(truth: np.ndarray, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """The truth's class of each pixel of a map `scale` times coarser, of `shape`: the truth's
    pixel at each map pixel's first corner (every `scale`-th, for a whole `scale`)."""
    rows = np.minimum((np.arange(shape[0]) * scale).astype(np.int64), truth.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * scale).astype(np.int64), truth.shape[1] - 1)
    return truth[np.ix_(rows, cols)]


def run_scan_demo(output_dir: Path, model_path: Path, device: str) -> None:
    """Write the phantom, segment it with the demo model, and print the Dice against its truth."""
    import SimpleITK as sitk

    from runtime.commands.demo import phantom
    from runtime.metrics import dice

    image, truth = phantom()
    scan_path, truth_path = output_dir / "phantom.nii.gz", output_dir / "phantom_truth.nii.gz"
    with OutputSet() as staged:        # renamed into place: a link already there is replaced, not written through
        staged.file(scan_path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))
        staged.file(truth_path, lambda tmp: sitk.WriteImage(truth, str(tmp), useCompression=True))
    mask_path = output_dir / "phantom_mask.nii.gz"
    started = time.perf_counter()
    prediction = run_one([scan_path], model_path, ScanOutputs(labels=mask_path), None, device, None, _Silent())
    elapsed = time.perf_counter() - started
    score = dice(prediction.labels_zyx, sitk.GetArrayFromImage(truth), 1)  # type: ignore[arg-type]
    found = int(np.count_nonzero(prediction.labels_zyx))
    click.echo(f"demo: {found} voxels segmented in {elapsed:.2f} s; Dice against the phantom's truth = {score:.3f}")
    if not _is_demo_model(model_path):
        click.echo("  (the phantom's truth is its bright structures, which the demo model finds: another model's Dice "
                   "here says only that it ran, not how well it does what it was made for)")


def _is_demo_model(model_path: Path, demo: Path = DEMO_MODEL) -> bool:
    """Whether `model_path` (a model folder, version folder or manifest) is the embedded demo model
    `demo` where `demo_model` finds it: in the working folder's source tree (an installed package,
    as the README installs it) or in the one beside this package."""
    from runtime.manifest import resolve_version_dir

    def version(path: Path) -> Path | None:
        try:
            return resolve_version_dir(Path(path)).resolve()
        except MedflowError:
            return None

    given = version(model_path)
    return given is not None and given in (version(demo), version(Path(__file__).resolve().parents[2] / demo))


class _Silent:
    def expect(self, windows: int) -> None:
        pass

    def advance(self, windows: int) -> None:
        pass

    def close(self) -> None:
        pass
