"""`runtime predict`, `runtime info` and `runtime demo`: thin commands over runtime.predict.

Heavy imports happen inside the commands; every project error becomes one `error:` line and exit 1.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from runtime.commands.reporting import log_lines, reports_errors
from runtime.errors import InputError

if TYPE_CHECKING:
    from runtime.contract import ClassSpec

DEVICE_CHOICES = ("auto", "cpu", "cuda", "tensorrt", "openvino")
# Seconds between progress lines where stderr is no terminal.
LOG_EVERY_S = 30.0


class Bar:
    """Progress on stderr: a one-line bar on a terminal; elsewhere (a log file, a pipe) a line every
    `every_s` seconds, flushed, so a long run shows it is moving."""

    def __init__(self, label: str, enabled: bool, every_s: float = LOG_EVERY_S) -> None:
        self.label, self.wanted, self.terminal = label, enabled, sys.stderr.isatty()
        self.enabled = enabled and self.terminal
        self.every_s = every_s
        self.total = self.done = 0
        self.started = self.last_line = time.perf_counter()

    def expect(self, windows: int) -> None:
        self.total += windows
        self._draw()

    def advance(self, windows: int) -> None:
        self.done = min(self.total, self.done + windows)
        self._draw()

    def _draw(self) -> None:
        if not self.total:
            return
        now = time.perf_counter()
        elapsed = now - self.started
        if self.enabled:
            filled = int(30 * self.done / self.total)
            click.echo(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} windows "
                       f"{elapsed:.1f} s", err=True, nl=False)
        elif self.wanted and now - self.last_line >= self.every_s:
            self.last_line = now
            click.echo(f"{self.label}: {self.done}/{self.total} windows, {elapsed:.0f} s", err=True)
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.total:
            click.echo("", err=True)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log what is done (backend, timings).")
@click.version_option(package_name="medflow")
def main(verbose: bool) -> None:
    """Run exported medical-imaging models on scans, locally or served by Triton."""
    log_lines(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        import SimpleITK as sitk

        # What ITK warns of in reading (a repaired header, missing slices) the runtime checks and refuses
        # itself, in one error line; -v shows ITK's own warnings too.
        shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        click.get_current_context().call_on_close(lambda: sitk.ProcessObject.SetGlobalWarningDisplay(shown))


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="model_repository/<name> (newest version) or one version folder; with --server, the served "
                   "model's name.")
@click.option("--output", type=click.Path(path_type=Path),
              help="Label map (segmentation; a pyramidal TIFF for a slide) or CSV of values.")
@click.option("--probabilities", type=click.Path(path_type=Path),
              help="Class probabilities: a 4D image, or for a slide a pyramidal TIFF of one uint8 sample per class.")
@click.option("--overlay", type=click.Path(path_type=Path), help="Slides: a PNG of the thumbnail with the classes drawn over it.")
@click.option("--geojson", type=click.Path(path_type=Path),
              help="Slides: the predicted regions as GeoJSON polygons in level-0 pixels (QuPath imports them).")
@click.option("--mpp", type=float, help="Slides: microns per pixel of level 0, for a file that does not say (or says wrong).")
@click.option("--tissue-mask", type=click.Path(path_type=Path),
              help="Slides: a mask image of the whole slide (non-zero is tissue) instead of the Otsu tissue mask.")
@click.option("--mask", type=click.Path(path_type=Path), help="Mask for preprocessing steps that use one.")
@click.option("--dicom-seg", type=click.Path(path_type=Path),
              help="A DICOM series input: also write the label map as a DICOM SEG (.dcm) referencing its instances.")
@click.option("--fractional", is_flag=True, help="With --dicom-seg: a fractional SEG of each class's probability.")
@click.option("--dicom-sr", type=click.Path(path_type=Path),
              help="A DICOM series input: also write the findings as a DICOM SR (.dcm): the class and its "
                   "probabilities, the values, or with --dicom-seg each segment's volume.")
@click.option("--uid-root", metavar="ROOT",
              help="With --dicom-seg/--dicom-sr: your organisation's DICOM UID root for their new UIDs.")
@click.option("--series", "series_uid", metavar="UID",
              help="A DICOM folder holding several series: the one with this Series Instance UID.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Many subjects: a CSV with subject_id and one column per channel.")
@click.option("--output-dir", type=click.Path(path_type=Path), help="Where a --csv run writes its outputs.")
@click.option("--save-probabilities", is_flag=True,
              help="In a --csv run, also write <subject>_probabilities.nii.gz (slides: .tif).")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
              help="auto picks TensorRT, CUDA, then the fastest CPU backend installed.")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for the model (default: the cores this process may use).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--strict-input", is_flag=True,
              help="Refuse a scan far outside what the model saw in training (its intensities, spacing or "
                   "orientation) instead of warning of it.")
@click.option("--expect-digest", metavar="sha256:HEX",
              help="Refuse to run unless the model version has this digest (as `runtime info` prints it).")
@click.option("--server", metavar="[http://|grpc://]HOST:PORT",
              help="Run the model on a Triton server (`runtime serve`); --model is then the served model's name.")
@click.option("--model-version", help="With --server: the version to run (default: the server's policy, the newest).")
@click.option("--timeout", type=click.FloatRange(min=1.0), default=600.0, show_default=True,
              help="With --server: seconds to wait for the answer.")
@reports_errors
def predict(inputs: tuple[Path, ...], model_path: Path, output: Path | None, probabilities: Path | None,
            overlay: Path | None, geojson: Path | None, mpp: float | None, tissue_mask: Path | None,
            mask: Path | None, dicom_seg: Path | None, fractional: bool, dicom_sr: Path | None, uid_root: str | None,
            series_uid: str | None,
            csv_path: Path | None, output_dir: Path | None, save_probabilities: bool, device: str,
            threads: int | None, quiet: bool, strict_input: bool, expect_digest: str | None, server: str | None,
            model_version: str | None, timeout: float) -> None:
    """Predict one scan (one file or DICOM folder per channel), one whole-slide image, or every
    subject of a CSV."""
    from runtime.commands import single, subjects
    from runtime.digests import load_as_exported
    from runtime.slide.reader import is_slide_input

    slide_options = {"--overlay": overlay, "--geojson": geojson, "--mpp": mpp, "--tissue-mask": tissue_mask}
    if series_uid is not None and csv_path is not None:
        raise InputError("--series chooses the series of one DICOM folder, not with --csv.")
    if fractional and dicom_seg is None:
        raise InputError("--fractional is for --dicom-seg: it writes the SEG's probabilities instead of its labels.")
    for option, value in (("--dicom-seg", dicom_seg), ("--dicom-sr", dicom_sr)):
        if value is not None and csv_path is not None:
            raise InputError(f"{option} runs with one DICOM series for now, not with --csv.")
    if uid_root is not None and dicom_seg is None and dicom_sr is None:
        raise InputError("--uid-root is the root of the UIDs of a --dicom-seg or --dicom-sr; give one of them.")
    from runtime.io.dicom_seg import check_uid_root

    scan_outputs = single.ScanOutputs(output, probabilities, dicom_seg, fractional, dicom_sr, check_uid_root(uid_root))
    if server is not None:
        from runtime.commands.remote import run_remote
        from runtime.slide.predict import SlideOutputs

        local_only = {"--mask": mask, "--threads": threads, "--device": None if device == "auto" else device}
        given = [name for name, value in local_only.items() if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} cannot be used with --server: the server's config places and "
                             "sizes the model; run locally (--model FOLDER) for those.")
        if csv_path is not None:
            from runtime.commands.remote import run_remote_csv

            _check_csv_options(inputs, output, probabilities, mask, output_dir, {**slide_options, "--mpp": None})
            run_remote_csv(csv_path, server, str(model_path), model_version, output_dir, save_probabilities, timeout,
                           Bar("predict", not quiet), expect_digest, default_mpp=mpp)
            return
        if output_dir is not None or save_probabilities:
            raise InputError("--output-dir and --save-probabilities are for --csv runs.")
        if not inputs:
            raise InputError("give a scan (file or DICOM folder per channel) or a slide to send to the server.")
        run_remote(list(inputs), server, str(model_path), model_version, SlideOutputs(output, probabilities, overlay,
                   geojson), mpp, tissue_mask, timeout, Bar("predict", not quiet), expect_digest, scan_outputs,
                   series_uid)
        return
    if model_version is not None:
        raise InputError("--model-version is for --server; locally, --model names the version folder "
                         "(model_repository/<name>/<version>).")
    _refuse_given_without_server("timeout")

    if (len(inputs) == 1 and csv_path is None
            and is_slide_input(inputs[0], load_as_exported(model_path, verify=False)[0].modality)):
        from runtime.commands.slide import run_slide
        from runtime.slide.predict import SlideOutputs

        scan_only = [name for name, value in (("--mask", mask), ("--dicom-seg", dicom_seg), ("--dicom-sr", dicom_sr),
                                              ("--series", series_uid)) if value is not None]
        if scan_only:
            raise InputError(f"{', '.join(scan_only)} {'is' if len(scan_only) == 1 else 'are'} for scans; a slide "
                             "takes its tissue mask with --tissue-mask and writes --output, --probabilities, --overlay "
                             "and --geojson.")
        run_slide(inputs[0], model_path, SlideOutputs(output, probabilities, overlay, geojson), mpp, tissue_mask,
                  device, threads, Bar("predict", not quiet), expect_digest=expect_digest)
        return
    if csv_path is not None:
        _check_csv_options(inputs, output, probabilities, mask, output_dir, {**slide_options, "--mpp": None})
        from runtime.commands.slides import refuse_mpp_for_scans, run_slides_csv

        manifest = load_as_exported(model_path, verify=False)[0]
        if manifest.modality == "histology":
            run_slides_csv(csv_path, model_path, output_dir, save_probabilities, device, threads,
                           Bar("predict", not quiet), expect_digest=expect_digest, default_mpp=mpp)
            return
        refuse_mpp_for_scans(mpp, manifest)
        subjects.run_csv(csv_path, model_path, output_dir, save_probabilities, device, threads, Bar("predict", not quiet),
                         expect_digest=expect_digest, strict_input=strict_input)
        return
    from runtime.commands.slide import refuse_slide_options

    refuse_slide_options(slide_options, inputs)
    if not inputs:
        raise InputError("give a scan (file or DICOM folder per channel), or --csv subjects.csv.")
    single.run_one(list(inputs), model_path, scan_outputs, mask, device, threads, Bar("predict", not quiet),
                   expect_digest=expect_digest, series_uid=series_uid, strict_input=strict_input)


# What a --csv run does instead of each option that is for one slide.
CSV_INSTEAD = {"--tissue-mask": "makes each slide's tissue mask itself (run a slide on its own to give one)",
               "--overlay": "writes each slide's overlay beside its label map",
               "--geojson": "writes each slide's regions (a segmentation model's) as <subject_id>_regions.geojson"}


def _check_csv_options(inputs: tuple[Path, ...], output: Path | None, probabilities: Path | None, mask: Path | None,
                       output_dir: Path | None, slide_options: dict[str, object]) -> None:
    """A --csv run takes its inputs from the CSV and writes into --output-dir alone."""
    given = [name for name, value in slide_options.items() if value is not None]
    if given:
        raise InputError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for one whole-slide image; a --csv "
                         f"run {'; '.join(CSV_INSTEAD[name] for name in given)}.")
    if inputs or output or probabilities or mask:
        raise InputError("--csv runs take their inputs from the CSV; drop the INPUTS, --output, --probabilities and "
                         "--mask.")
    if output_dir is None:
        raise InputError("--csv needs --output-dir, the folder for the outputs.")


def _class_text(spec: ClassSpec) -> str:
    """A class as `runtime info` lists it: value=name, then the coded concepts and unit it carries."""
    from runtime.contract import class_concepts

    codes = [f"{key} {concept.scheme} {concept.value} {concept.meaning}" for key, concept in class_concepts(spec)]
    return f"{spec.value}={spec.name}" + (f" ({'; '.join(codes)})" if codes else "")


@main.command()
@click.argument("predictions", type=click.Path(path_type=Path))
@click.argument("labels", type=click.Path(path_type=Path))
@click.option("--output-dir", type=click.Path(path_type=Path), required=True,
              help="Where metrics.csv and summary.csv are written.")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="Take the class values and names from this segmentation model's manifest.")
@click.option("--classes", metavar="VALUE:NAME[,...]",
              help="The classes to score, e.g. 1:liver,2:spleen (default: every non-zero value of the labels).")
@click.option("--nsd-tolerance", "tolerance_mm", type=click.FloatRange(min=0.0), default=1.0, show_default=True,
              help="Millimetres within which surfaces count as agreeing, for the normalised surface Dice.")
@click.option("--relabel", metavar="VALUE=CLASS[,...]",
              help="Score the labels' values as these classes, every other value as background, e.g. 5=1,2=2,3=2 "
                   "(default with --model: the mapping the model was trained with, where it records one).")
@click.option("--ignore", "ignore_text", metavar="VALUE",
              help="The labels' value of unannotated voxels: in a label map holding it, no score counts them and "
                   "HD95 and NSD are NaN; default with --model: the value the model was trained with, where it "
                   "records one.")
@reports_errors
def evaluate(predictions: Path, labels: Path, output_dir: Path, model_path: Path | None, classes: str | None,
             tolerance_mm: float, relabel: str | None, ignore_text: str | None) -> None:
    """Score the label maps in PREDICTIONS against those of the same file name in LABELS (a folder,
    or a subjects CSV: each row's label map against the prediction named after its subject id): per
    class Dice, IoU, sensitivity, specificity, precision, HD95 and NSD (mm), per subject and
    summarised."""
    from runtime.commands.evaluate import model_classes, parse_classes, parse_ignore, parse_relabel, run_evaluate
    from runtime.digests import check_config_digest, load_as_exported
    from runtime.manifest import label_ignore

    if model_path is not None and classes is not None:
        raise InputError("give the classes by --model or by --classes, not both.")
    manifest = None
    if model_path is not None:
        manifest, version_dir = load_as_exported(model_path, verify=False)
        check_config_digest(version_dir)          # the classes and the training's labelling, as exported
    chosen, trained = model_classes(manifest) if manifest is not None else (
        parse_classes(classes) if classes else None, None)
    ignore, ignore_from = parse_ignore(ignore_text), "--ignore"
    if ignore is None and manifest is not None:
        ignore, ignore_from = label_ignore(manifest), f"model {manifest.name}'s provenance.label_ignore"
    run_evaluate(predictions, labels, output_dir, chosen, tolerance_mm,
                 parse_relabel(relabel) if relabel is not None else trained,
                 where_held=relabel is None and trained is not None, manifest=manifest, ignore=ignore,
                 ignore_from=ignore_from)


@main.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="The radiology model: a segmentation model sends SEGs, a classifier or regression model SRs. "
                   "With --server, the served model's name.")
@click.option("--ae-title", default="SEGMENTER", show_default=True, help="This node's AE title.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Where to listen; 0.0.0.0 opens it to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=11112, show_default=True,
              help="The port this node listens on.")
@click.option("--send-to", metavar="AE@HOST:PORT",
              help="Required: where the SEGs or SRs go (C-STORE), e.g. PACS@127.0.0.1:4242.")
@click.option("--allow", metavar="AE[,AE...]", help="Required: the calling AE titles whose associations are accepted.")
@click.option("--storage", type=click.Path(path_type=Path), required=True,
              help="Where received instances, states and results are kept (and resumed from).")
@click.option("--idle", "idle_s", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds without a new instance after which a series is complete.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
              help="Where the model runs on this machine, as for runtime predict (not with --server).")
@click.option("--report", is_flag=True,
              help="A segmentation model: also send the DICOM SR of each segment's volume with the SEG.")
@click.option("--modality", metavar="CODE[,CODE...]",
              help="The DICOM modalities of the series the model is for (e.g. CT): series of others are "
                   "acknowledged and skipped. Default: every modality.")
@click.option("--server", metavar="[http://|grpc://]HOST:PORT",
              help="Run the model on a Triton server (`runtime serve`): each series is sent to it whole; while the "
                   "server is down or restarting, series wait and are sent again.")
@click.option("--model-version", help="With --server: the version to run (default: the newest when the node starts).")
@click.option("--timeout", type=click.FloatRange(min=1.0), default=600.0, show_default=True,
              help="With --server: seconds to wait for a series' answer.")
@click.option("--uid-root", metavar="ROOT",
              help="Your organisation's DICOM UID root, under which the SEGs' and SRs' new UIDs are made "
                   "(default: highdicom's).")
@click.option("--status", is_flag=True, help="Print what the storage folder holds and exit.")
@click.option("--retry", "retry_uid", metavar="SERIES_UID",
              help="Have a failed series segmented again (once its cause is mended), or an incomplete one of the "
                   "instances it has, and exit.")
@reports_errors
def listen(model_path: Path | None, ae_title: str, address: str, port: int, send_to: str | None, allow: str | None,
           storage: Path, idle_s: float, device: str, report: bool, modality: str | None, server: str | None,
           model_version: str | None, timeout: float, uid_root: str | None, status: bool,
           retry_uid: str | None) -> None:
    """Receive DICOM series (C-STORE), run the model on each and send its DICOM SEG (or SR) to a PACS."""
    from runtime.commands.listen import Served, run_listen, run_retry, run_status

    if status:
        run_status(storage)
        return
    if retry_uid is not None:
        run_retry(storage, retry_uid)
        return
    missing = [name for name, value in (("--model", model_path), ("--send-to", send_to), ("--allow", allow))
               if value is None]
    if missing:
        raise InputError(f"runtime listen needs {', '.join(missing)} (or --status to show the storage folder).")
    if server is None and model_version is not None:
        raise InputError("--model-version is for --server; locally, --model names the version folder "
                         "(model_repository/<name>/<version>).")
    if server is None:
        _refuse_given_without_server("timeout")
    if server is not None and device != "auto":
        raise InputError(f"--device {device} cannot be used with --server: the server's config places the model "
                         "(its instance_group).")
    run_listen(model_path, ae_title, address, port, send_to, allow, storage, idle_s, device, report,
               None if server is None else Served(server, model_version, timeout), modality, uid_root)


def _refuse_given_without_server(name: str) -> None:
    """InputError where the option `name`, which only a run over --server reads, was given without it."""
    from click.core import ParameterSource

    if click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE:
        raise InputError(f"--{name} is for --server (the seconds to wait for the server's answer); a local run "
                         "takes as long as it needs.")


@main.command()
@click.argument("repository", type=click.Path(path_type=Path), default=Path("model_repository"))
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Where the server listens; 0.0.0.0 opens it to the network.")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--log", "log_path", type=click.Path(path_type=Path),
              help="The server's log file (default: a temporary one, kept when the server fails).")
@click.option("--poll", type=click.IntRange(1, 3600), metavar="SECONDS",
              help="Look at the repository every SECONDS and load new versions (unload removed ones) while serving.")
@reports_errors
def serve(repository: Path, address: str, http_port: int, grpc_port: int, metrics_port: int,
          log_path: Path | None, poll: int | None) -> None:
    """Serve a model repository with a local Triton Inference Server until Ctrl-C."""
    from runtime.commands.serve import run_serve
    from runtime.triton.server import Ports

    if len({http_port, grpc_port, metrics_port}) < 3:
        raise InputError("--http-port, --grpc-port and --metrics-port must be three different ports.")
    run_serve(repository, Ports(address, http_port, grpc_port, metrics_port), log_path, poll)


def _one_model(argument: Path | None, option: Path | None) -> Path:
    """The model given as MODEL_PATH or, as runtime predict takes it, with --model: one of them."""
    if (argument is None) == (option is None):
        raise InputError("give the model once: as MODEL_PATH or with --model (model_repository/<name> or a version "
                         "folder).")
    return argument if argument is not None else option


_MODEL_OPTION = click.option("--model", "model_option", type=click.Path(path_type=Path),
                             help="The model, as runtime predict takes it (instead of MODEL_PATH).")


@main.command()
@click.argument("model_path", required=False, type=click.Path(path_type=Path))
@_MODEL_OPTION
@reports_errors
def info(model_path: Path | None, model_option: Path | None) -> None:
    """What a model expects and returns, and the devices installed here."""
    from runtime.backends import auto_order, available_backends
    from runtime.digests import check_config_digest, load_as_exported

    manifest, folder = load_as_exported(_one_model(model_path, model_option))
    digest = check_config_digest(folder)
    click.echo(describe(manifest, folder))
    click.echo(f"  digest      {digest.describe()} (pin it with runtime predict --expect-digest)")
    click.echo(f"  devices     installed here: {', '.join(available_backends())}; "
               f"--device auto tries {', '.join(auto_order())}")


def describe(manifest: Any, folder: Path) -> str:
    window = manifest.window
    lines = [
        f"{manifest.name} version {manifest.version} ({folder})",
        f"  task        {manifest.task}, {manifest.modality}, {manifest.dimensions}D, arrays in {manifest.axis_order} order",
        f"  inputs      {len(manifest.channels)} channel(s): {', '.join(manifest.channels)}",
        f"  classes     {', '.join(map(_class_text, manifest.classes))}",
        "  preprocess  " + ("; ".join(f"{s.name} {dict(s.params)}" for s in manifest.preprocessing) or "none"),
        f"  window      {window.mode}, patch {'×'.join(map(str, window.patch_size))}, overlap {window.overlap}, "
        f"{window.blending} blending, batch {window.batch_size}, mirror axes {list(window.mirror_axes) or 'none'}, "
        f"skip background {'yes' if window.skip_background else 'no'}",
        f"  output      activation {manifest.output.activation}"
        + (f", labels by {manifest.output.label_rule}" if manifest.task != "regression" else ", values as given")
        + f", ensemble {manifest.output.ensemble}"
        + (f", probabilities by {manifest.output.probabilities} on the scan's grid"
           if manifest.output.probabilities else ""),
        f"  onnx        {manifest.onnx.file} (opset {manifest.onnx.opset}), input {manifest.onnx.input!r}, "
        f"output {manifest.onnx.output!r}",
        f"  precision   {precision(manifest)}",
    ]
    if manifest.slide is not None:
        slide = manifest.slide
        lines.insert(2, f"  slide       {slide.mpp:g} um/pixel; tissue mask at {slide.tissue_mpp:g} um/pixel, specks under "
                        f"{slide.min_object_um2:g} um2 dropped, holes under {slide.min_hole_um2:g} um2 filled")
    lines += [f"  provenance  {key}: {_provenance_value(key, value)}" for key, value in manifest.provenance.items()]
    return "\n".join(lines)


def _provenance_value(key: str, value: Any) -> Any:
    """A provenance entry as `info` prints it: the subjects a model trained on counted, not listed."""
    from runtime.manifest import TRAINED_ON

    if key == TRAINED_ON and isinstance(value, dict) and isinstance(value.get("subjects"), list):
        return f"{len(value['subjects'])} subject(s) trained or validated on (their ids hashed)"
    return value


def precision(manifest: Any) -> str:
    """An int8 version (made by `export quantize`) and what it was measured on, or whether export
    allowed the graph half precision on a GPU."""
    from runtime.manifest import checked_backends

    quantization = manifest.provenance.get("quantization")
    if isinstance(quantization, dict):
        measured = ", ".join(checked_backends(manifest) or ())
        return (f"int8, quantized from version {quantization.get('from_version', '?')}"
                + (f", measured on {measured}" if measured else "")
                + ("; its manifest still allows fp16 on a GPU, never checked for int8: quantize the float version "
                   "again" if manifest.onnx.fp16 else ""))
    return "as exported, not quantized" + ("; fp16 allowed on a GPU (export checked it)" if manifest.onnx.fp16 else "")


@main.command()
@click.argument("model_path", required=False, type=click.Path(path_type=Path))
@_MODEL_OPTION
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="cpu", show_default=True)
@reports_errors
def verify(model_path: Path | None, model_option: Path | None, device: str) -> None:
    """Prove a model still gives its numbers: schema, checksums, its digest and its stored samples."""
    from runtime.commands.verify import SAMPLE_TOLERANCE, verify_model

    result = verify_model(_one_model(model_path, model_option), device=device)
    samples = (f"{result.samples} stored sample(s) reproduced on {result.backend} (max |difference| "
               f"{result.max_abs_diff:.2g}, {result.bound()}"
               + (", the tolerance recorded for this backend)" if result.tolerance != SAMPLE_TOLERANCE else ")")
               if result.samples else "no stored sample to reproduce (it was not exported with any)")
    click.echo(f"{result.name} version {result.version}: {result.files} files match their sha256; {samples}")
    click.echo(f"  one window of its patch run on {result.backend}: the output the manifest promises (shape, finite"
               f"{', probabilities' if result.probabilities else ''})")
    click.echo(f"  digest {result.digest.describe()}")
    for staging in result.stale:
        click.echo(f"  {staging.describe()}")


@main.command()
@click.option("--output-dir", type=click.Path(path_type=Path), default=Path("demo_output"), show_default=True)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="default: both of the source tree's demo models, demo_bright_structures (a scan) and "
                   "demo_stain_regions (a slide); a model given runs the demo of its modality")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@reports_errors
def demo(output_dir: Path, model_path: Path | None, device: str) -> None:
    """Segment a synthetic phantom and a synthetic slide with the embedded demo models and score each
    against its truth."""
    from runtime.commands import single

    single.run_demo(output_dir, model_path, device)


if __name__ == "__main__":
    main()
