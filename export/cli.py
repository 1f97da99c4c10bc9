"""`export`: package models into versioned folders of a Triton model repository."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from runtime.commands.reporting import log_lines, reports_errors
from runtime.commands.cli import verify as runtime_verify

if TYPE_CHECKING:
    from export.versions import VersionCheck


@click.group()
@click.version_option(package_name="medflow")
def main() -> None:
    """Package models into versioned folders of a Triton model repository."""
    log_lines(logging.WARNING)


@main.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--onnx", "as_onnx", is_flag=True, help="Export RUN_DIR (a `trainer fit` output folder) to ONNX.")
@click.option("--from-onnx", "onnx_paths", type=click.Path(path_type=Path), multiple=True,
              help="Package an existing ONNX model instead (one image input [batch, channels, *spatial]).")
@click.option("--from-nnunet", "nnunet_dirs", type=click.Path(path_type=Path), multiple=True,
              help="Package an nnU-Net v2 trained model folder instead (its plans.json, dataset.json and fold_*/).")
@click.option("--checkpoint", type=click.Choice(["final", "best"]), default="final", show_default=True,
              help="With --from-nnunet: each fold's checkpoint_final.pth or checkpoint_best.pth.")
@click.option("--assume-plans-network", is_flag=True,
              help="With --from-nnunet: take a trainer whose code is not installed here to build the plans' network.")
@click.option("--disable-tta", is_flag=True,
              help="With --from-nnunet: no mirrored windows, as nnUNetv2_predict --disable_tta (faster; its labels).")
@click.option("--spec", "spec_path", type=click.Path(path_type=Path),
              help="With --from-onnx: YAML describing the model (docs/spec.md).")
@click.option("--repository", type=click.Path(path_type=Path), default=Path("model_repository"),
              show_default=True, help="Model repository; the model goes to <repository>/<name>/<version>/ "
                                      "(by default model_repository/ in the current folder).")
@click.option("--name", default=None, help="Model name (folder in the repository); default: the config's or spec's.")
@click.option("--folds", default="all", show_default=True,
              help="Folds in the ensemble: all, best-K (by validation metric) or a list like 1.1,2.1 (RUN_DIR --onnx); "
                   "with --from-nnunet all (the numbered folds found) or a list like 0,1,2 or fold_all.")
@click.option("--ensemble", "rule", type=click.Choice(["mean", "vote"]), default="mean", show_default=True,
              help="Mean probability; vote adds the folds' majority vote (classification; RUN_DIR --onnx).")
@click.option("--sample", "samples", multiple=True, type=click.Path(path_type=Path),
              help="A scan whose central window is stored with the model and used for the parity checks "
                   "(RUN_DIR --onnx).")
@click.option("--tolerance", type=float, default=None,
              help="Largest |torch - ONNX| accepted (default 1e-4; relative beyond outputs of 1; RUN_DIR --onnx).")
@click.option("--no-trained-on", "untracked", is_flag=True,
              help="Leave out the record of the subjects the folds trained on (salted hashes of their ids, by which "
                   "runtime predict --csv warns of them; anyone holding the model can test an id against it).")
@click.option("--triton-onnx", is_flag=True,
              help="Also write <name>_onnx: the bare graph for Triton's onnxruntime backend (fixed window, dynamic batching).")
@reports_errors
def build(run_dir: Path | None, as_onnx: bool, onnx_paths: tuple[Path, ...], nnunet_dirs: tuple[Path, ...],
          checkpoint: str, assume_plans_network: bool, disable_tta: bool, spec_path: Path | None, repository: Path,
          name: str | None, folds: str, rule: str, samples: tuple[Path, ...], tolerance: float | None,
          untracked: bool, triton_onnx: bool) -> None:
    """Package a training run (RUN_DIR --onnx), an ONNX model (--from-onnx --spec) or an nnU-Net v2
    trained model (--from-nnunet FOLDER) as the next version."""
    from runtime.contract import NAME_PATTERN
    from runtime.errors import InputError

    if name is not None and not NAME_PATTERN.match(name):
        raise InputError(f"--name must be letters, digits, _ and - only (it names the model folder), got {name!r}.")
    onnx_path, nnunet_dir = _one_source(onnx_paths, "--from-onnx"), _one_source(nnunet_dirs, "--from-nnunet")
    if nnunet_dir is not None:
        given = (("RUN_DIR", run_dir is not None), ("--onnx", as_onnx), ("--from-onnx", onnx_path is not None),
                 ("--spec", spec_path is not None), ("--ensemble", rule != "mean"), ("--sample", bool(samples)),
                 ("--tolerance", tolerance is not None), ("--no-trained-on", untracked))
        others = [option for option, present in given if present]
        if others:
            raise InputError(f"--from-nnunet takes its settings from the nnU-Net folder; leave out "
                             f"{', '.join(others)}: python -m export build --from-nnunet FOLDER [--folds 0,1,2] "
                             "[--checkpoint best]")
        from export.nnunet import build_from_nnunet

        folder = build_from_nnunet(nnunet_dir, repository, name=name, folds=folds, checkpoint=checkpoint,
                                   assume_plans_network=assume_plans_network, mirroring=not disable_tta,
                                   check=_bare_check(triton_onnx))
        _finish(folder, repository, triton_onnx)
        return
    if checkpoint != "final" or assume_plans_network or disable_tta:
        raise InputError("--checkpoint, --assume-plans-network and --disable-tta are for an nnU-Net folder; use them "
                         "with --from-nnunet.")

    if onnx_path is not None:
        if run_dir is not None or as_onnx or spec_path is None:
            raise InputError("--from-onnx takes --spec and no RUN_DIR: python -m export build --from-onnx model.onnx "
                             "--spec spec.yaml")
        run_only = [option for option, given in (("--folds", folds != "all"), ("--ensemble", rule != "mean"),
                                                 ("--sample", bool(samples)), ("--tolerance", tolerance is not None),
                                                 ("--no-trained-on", untracked))
                    if given]
        if run_only:
            raise InputError(f"{', '.join(run_only)} apply to a training run's build (RUN_DIR --onnx), not to "
                             "--from-onnx, whose samples are a smooth field the graph is run on; leave them out.")
        from export.package import build_from_onnx
        from export.spec import load_spec

        folder = build_from_onnx(onnx_path, load_spec(spec_path, name=name), repository, _bare_check(triton_onnx))
        _finish(folder, repository, triton_onnx)
        return
    if run_dir is None or not as_onnx:
        raise InputError("give a run folder and --onnx (python -m export build out/ --onnx), --from-onnx model.onnx "
                         "--spec spec.yaml, or --from-nnunet FOLDER.")
    from export.from_run import build_from_run
    from export.onnx_export import DEFAULT_TOLERANCE

    folder = build_from_run(run_dir, repository, name=name, folds=folds, samples=samples,
                            tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance, rule=rule,
                            check=_bare_check(triton_onnx), record_subjects=not untracked)
    _finish(folder, repository, triton_onnx)


def _one_source(given: tuple[Path, ...], option: str) -> Path | None:
    """The one model `option` names; InputError where it is given more than once (an ensemble of
    models, or of nnU-Net configurations as nnUNetv2_ensemble makes, is no build: each is a model)."""
    from runtime.errors import InputError

    if len(given) > 1:
        raise InputError(f"{option} is given {len(given)} times; a build packages one model (an nnU-Net folder's "
                         "folds are its ensemble): build each as its own model, e.g. with --name liver_2d and "
                         "--name liver_3d; an ensemble of configurations (nnUNetv2_ensemble) is not made by export.")
    return given[0] if given else None


def _bare_check(triton_onnx: bool) -> VersionCheck | None:
    """With --triton-onnx, what refuses a version whose bare graph has no room, before it is built."""
    if not triton_onnx:
        return None
    from export.triton import check_bare_room

    return check_bare_room


def _finish(folder: Path, repository: Path, triton_onnx: bool) -> None:
    """Print the new version folder, its digest on the next line, and then the bare-graph model, when
    one is asked for."""
    from runtime.manifest import load_manifest, version_digest

    bare = None
    if triton_onnx:
        from export.triton import write_onnx_model

        manifest, _ = load_manifest(folder)
        bare = write_onnx_model(repository, manifest, folder)
    click.echo(str(folder))
    click.echo(f"digest {version_digest(folder)}")
    if bare is not None:
        click.echo(f"Triton onnxruntime model: {bare}")


@main.command(name="list")
@click.argument("repository", type=click.Path(path_type=Path), default=Path("model_repository"))
@reports_errors
def list_models(repository: Path) -> None:
    """Models and versions of a repository: task, folds, metrics, created, size."""
    from export.listing import describe_repository

    click.echo(describe_repository(repository))


@main.command()
@click.argument("version", type=click.Path(path_type=Path))
@click.option("--calibration", "csv_path", required=True, type=click.Path(path_type=Path),
              help="Subjects (subject_id and one column per channel); the last fifth is held out for the check.")
@click.option("--windows", type=click.IntRange(1, 100_000), default=300, show_default=True,
              help="Calibration windows at most, spread over the subjects.")
@click.option("--min-agreement", type=click.FloatRange(0.0, 1.0), default=0.995, show_default=True,
              help="Share of held-out voxels whose int8 label must equal the float one, on every CPU backend.")
@click.option("--min-dice", type=click.FloatRange(0.0, 1.0), default=0.99, show_default=True,
              help="Dice each foreground class's int8 labels must reach against the float ones (held-out "
                   "subjects pooled), on every CPU backend.")
@reports_errors
def quantize(version: Path, csv_path: Path, windows: int, min_agreement: float, min_dice: float) -> None:
    """An int8 version of a float32 model version (post-training quantization with NNCF), written
    only if its labels agree with the float ones on held-out subjects. VERSION: a version folder, or
    a model folder (its newest float32 version)."""
    from export.quantize import quantize_version
    from runtime.manifest import version_digest

    def say(line: str) -> None:
        click.echo(line, err=line.startswith("warning:"))

    folder = quantize_version(version, csv_path, windows, min_agreement, say, min_dice=min_dice)
    click.echo(str(folder))
    click.echo(f"digest {version_digest(folder)}")


main.add_command(runtime_verify, name="verify")


if __name__ == "__main__":
    main()
