"""`trainer`: the training command line — `check`, `splits`, `fit`, `summary`, `csv`, `landmarks` and
`patches` (training patches mined from whole-slide images); heavy imports happen inside commands.

Every project error becomes `error:` lines on stderr and exit code 1, never a traceback; a config or
subject table with several problems lists each on its own line.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

from runtime.commands.reporting import log_lines, reports_errors

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.splits import Fold
    from trainer.subjects import Subject

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
@click.version_option(package_name="medflow")
def main() -> None:
    """Train cross-validated models from a YAML config and a subject CSV."""
    log_lines(logging.WARNING)


def lists_problems(command: F) -> F:
    """Print each problem of a ConfigError on its own `error:` line and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from trainer.config import CONFIG_DOC, ConfigError

        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            if exc.source:
                click.echo(f"{exc.source} has {len(exc.problems)} problem(s) (see {CONFIG_DOC}):", err=True)
            for problem in exc.problems:
                click.echo(f"error: {' '.join(problem.split())}", err=True)
            raise click.exceptions.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _load(config_path: Path) -> tuple[Config, list[Subject], list[Fold]]:
    """The config, its subjects and its folds, or the first stage's problems."""
    from trainer.config import load_config
    from trainer.splits import subject_folds
    from trainer.subjects import read_subjects

    config = load_config(config_path)
    subjects = read_subjects(config)
    folds = subject_folds(config, subjects)
    return config, subjects, folds


@main.command()
@click.argument("config_path", type=click.Path(path_type=Path))
@click.option("--labels", is_flag=True,
              help="Also read every label map on its scan's grid and refuse values that are no class (slower).")
@reports_errors
@lists_problems
def check(config_path: Path, labels: bool) -> None:
    """Validate CONFIG_PATH and its subject CSV, and export the configured network to ONNX in memory;
    list every problem and exit 1 if there is any."""
    from trainer.fold import model_spec
    from trainer.models import check_exportable
    from trainer.splits import describe_cv

    from trainer.subjects import missing_class_warnings, one_class_warning, subject_id_warning, target_scale_warning

    config, subjects, folds = _load(config_path)
    for warning in (target_scale_warning(config, subjects), subject_id_warning(subjects),
                    one_class_warning(config, subjects, folds), *missing_class_warnings(config, subjects, folds)):
        if warning is not None:
            click.echo(warning, err=True)
    if labels:
        from trainer.data import check_labels

        check_labels(config, subjects, lambda line: click.echo(line, err=True))
    check_exportable(model_spec(config))
    split = describe_cv(config.cross_validation, folds)
    groups = config.data.group_column
    grouped = f" in {_count(list({s.group for s in subjects}), 'group')} ({groups})" if groups else ""
    click.echo(f"config OK: {_count(subjects, 'subject')}{grouped}, {_count(folds, 'fold')} ({split}); "
               f"{config.model.architecture} exports to ONNX")


@main.command()
@click.argument("config_path", type=click.Path(path_type=Path))
@click.option("--write", is_flag=True, help="Also write splits.csv into the config's output_dir.")
@reports_errors
@lists_problems
def splits(config_path: Path, write: bool) -> None:
    """Show the subject-level folds of CONFIG_PATH (class counts for classification) without training."""
    from trainer.splits import describe_cv, fold_table

    config, subjects, folds = _load(config_path)
    label_of = {s.subject_id: s.label for s in subjects} if config.task == "classification" else None
    split = describe_cv(config.cross_validation, folds)
    click.echo(f"{_count(subjects, 'subject')}, {_count(folds, 'fold')} ({split})")
    click.echo(fold_table(folds, label_of))
    if write:
        click.echo(_write(folds, config.output_dir))


def _write(folds: list[Fold], output_dir: Path) -> str:
    """Write splits.csv unless the folder already holds different splits (an earlier run keeps its own)."""
    from runtime.errors import OutputError
    from trainer.splits import SPLITS_FILE, read_splits, write_splits

    path = output_dir / SPLITS_FILE
    if path.exists():
        if read_splits(path) == folds:
            return f"{path} already holds these splits"
        raise OutputError(f"{path} already holds other splits (an earlier run's); remove it or choose another "
                          "output_dir, so that a run never mixes two splits.")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        return f"wrote {write_splits(folds, path)}"
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc}); check output_dir in the config.") from None


@main.command()
@click.argument("config_path", type=click.Path(path_type=Path))
@click.option("--fold", "fold_id", help="Train one (testing, validation) fold only, e.g. 2.1: one job of a cluster array.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from each fold's last checkpoint.")
@click.option("--files-unchanged", is_flag=True,
              help="With --resume or --fold: files the table names whose modification time alone changed (restored "
                   "without their times) hold what they held; record their times and go on.")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for the model (default: torch's, all cores); fewer where the CPU is shared.")
@click.option("-v", "--verbose", is_flag=True, help="Log more: folds resumed, distributed ranks.")
@reports_errors
@lists_problems
def fit(config_path: Path, fold_id: str | None, resume: bool, files_unchanged: bool, threads: int | None,
        verbose: bool) -> None:
    """Train every fold of CONFIG_PATH (or one with --fold) into the config's output_dir.

    One line per epoch (fold, epoch, training loss, validation metrics, seconds, time left), written
    at once whether the output is a terminal or a file; a progress bar on a terminal only."""
    from trainer.config import load_config
    from trainer.fit import fit as run_fit

    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    config = load_config(config_path)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    results = run_fit(config, fold_id=fold_id, resume=resume, say=click.echo, files_unchanged=files_unchanged)
    for result in results:
        metric = result.get("monitored", "")
        best = result.get("validation", {}).get(metric)
        shown = f"{best:.4f}" if isinstance(best, float) else "n/a"
        click.echo(f"fold {result['fold']}: best epoch {result['best_epoch']}, validation {metric} {shown}")
    if results:
        click.echo(f"run written to {config.output_dir}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@reports_errors
def summary(run_dir: Path) -> None:
    """What the run in RUN_DIR found: each finished fold's best epoch and metrics, their mean and
    spread, and RUN_DIR/curves.png with every fold's curves."""
    from trainer.summary import outer_fold_ensembles, plot, read_folds, table, unfinished_folds

    folds = read_folds(run_dir)
    unfinished = unfinished_folds(run_dir, folds)
    if unfinished:
        verb = "has" if len(unfinished) == 1 else "have"
        click.echo(f"warning: {len(unfinished)} of the run's {len(unfinished) + len(folds)} folds {verb} not finished "
                   f"({', '.join(unfinished)}): the means below are of the finished folds alone", err=True)
    for line in table(folds, outer_fold_ensembles(run_dir, folds)):
        click.echo(line)
    plot(folds, run_dir / "curves.png")
    click.echo(f"curves of {len(folds)} fold(s) in {run_dir / 'curves.png'}")


@main.command()
@click.argument("config_path", type=click.Path(path_type=Path))
@reports_errors
@lists_problems
def landmarks(config_path: Path) -> None:
    """Learn a histogram_standardise step's landmarks from the images of CONFIG_PATH's subject table
    (no labels used) and print the config's preprocessing list with that step, as YAML to paste in.

    The images are preprocessed up to the step's place: the config's own histogram_standardise step
    (its landmarks replaced; it may leave them out), else the first zscore, rescale or normalize
    step, else the end."""
    from trainer.landmarks import as_yaml, learn, load_for_learning
    from trainer.subjects import read_subjects

    config = load_for_learning(config_path)
    subjects = read_subjects(config)
    steps, place = learn(config, subjects, lambda line: click.echo(line, err=True))
    click.echo(as_yaml(steps, place, len(subjects)), nl=False)


@main.command("csv")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--channel", "channels", multiple=True, required=True, metavar="NAME=PATTERN",
              help="A channel column and the file names it takes, e.g. t1=*_t1.nii.gz; repeat per channel.")
@click.option("--label", metavar="PATTERN", help="The label maps' file names, e.g. *_seg.nii.gz.")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="The CSV to write (must not exist).")
@reports_errors
def make_csv(data_dir: Path, channels: tuple[str, ...], label: str | None, output: Path) -> None:
    """Make the subject CSV from DATA_DIR by file-name patterns: a folder per subject, or a flat
    folder where a pattern's '*' is the subject id."""
    from trainer.tablemaker import build_table, parse_channel, unmatched_folders, write_table

    columns = [parse_channel(text) for text in channels]
    rows = build_table(data_dir, columns, label)
    write_table(rows, output)
    left = unmatched_folders(rows, data_dir, columns, label)
    if left:
        shown = ", ".join(left[:10]) + (f" and {len(left) - 10} more" if len(left) > 10 else "")
        click.echo(f"warning: folder(s) {shown} of {data_dir} hold files but none the patterns match, so they are "
                   "left out of the table; where they are subjects (in another format, say), widen the patterns",
                   err=True)
    click.echo(f"wrote {output}: {len(rows)} subject(s), columns subject_id, "
               f"{', '.join([*(parse_channel(t).name for t in channels), *(['label'] if label else [])])}")


@main.command()
@click.argument("slides_csv", type=click.Path(path_type=Path))
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="The training config: its slide section, patch size, data columns and seed.")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="A new (or empty) folder for images/, labels/ and patches.csv.")
@click.option("--min-tissue", default=0.5, show_default=True, type=float,
              help="The share of a patch that must be tissue (0 to 1).")
@click.option("--max-per-slide", default=200, show_default=True, type=int,
              help="Patches kept per slide at most, drawn with the config's seed where more qualify.")
@click.option("--mpp", type=float, help="Microns per pixel of level 0, replacing what each slide says.")
@reports_errors
@lists_problems
def patches(slides_csv: Path, config_path: Path, output: Path, min_tissue: float, max_per_slide: int,
            mpp: float | None) -> None:
    """Mine training patches from the slides of SLIDES_CSV (columns slide, subject_id, and label or class)
    into --output, with the subject table `trainer fit` reads (docs/trainer.md)."""
    from trainer.config import load_config
    from trainer.patches import PATCHES_FILE, Mining, mine_patches

    config = load_config(config_path)
    count = mine_patches(slides_csv, config, output, Mining(min_tissue, max_per_slide, mpp), click.echo)
    click.echo(f"wrote {count} patch(es) and {output / PATCHES_FILE}")


if __name__ == "__main__":
    main()
