"""`trainer fit`: the run folder, its folds, and the summary over folds.

out/
  config.yaml        the resolved config (every default filled in)
  run.json           config hash, versions, git commit, created, folds
  splits.csv         fold, subject_id, role (train / validation / testing)
  files.json         size and modification time of each file the subject table names
  folds/<t.v>/       metrics.csv, best.pt, last.pt, curves.png, result.json, <split>_cases.csv,
                     <split>_pictures/
  summary.csv        mean ± std over folds of the best epoch's validation and testing metrics, and of
                     the testing metrics over outer folds (testing_outer_folds; of their ensembles,
                     testing_outer_ensembles)
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import subprocess
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from runtime import metrics
from runtime.errors import InputError
from runtime.manifest import sha256_of
from trainer.atomic import replace_text
from trainer.config import Config, config_hash, config_hashes, resolved_dict, write_resolved
from trainer.data import load_samples
from trainer.distributed import Distributed, cpu_note
from trainer.fold import FoldTrainer, RunClock, absent_class_warnings, refuse_unannotated
from trainer.splits import Fold, read_splits, select_fold, subject_folds, write_splits
from trainer.sampling import is_annotated
from trainer.summary import outer_fold_ensembles, outer_fold_testing, read_run
from trainer.subjects import (
    Subject, missing_class_warnings, one_class_warning, read_subjects, subject_id_warning, target_scale_warning,
)

log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def versions() -> dict[str, str]:
    import SimpleITK
    import torch
    import torchio

    from trainer import __version__

    return {"medflow": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchio": torchio.__version__, "numpy": np.__version__, "SimpleITK": SimpleITK.Version_VersionString()}


# What a new run writes into its folder first (run.json, written last, marks a run); files.json holds
# the size and modification time of each file the subject table names.
RUN_FILES = ("config.yaml", "splits.csv", "files.json")
# What a run writes into its folder later: the summary over folds and `trainer summary`'s figure.
LATER_FILES = ("summary.csv", "curves.png")


def subject_files(subjects: Sequence[Subject]) -> list[Path]:
    """Every file the subjects name (images and label maps), each once, in order."""
    named = {path for s in subjects for path in (*s.channels, *((s.label,) if isinstance(s.label, Path) else ()))}
    return sorted(named, key=str)


def file_stats(files: Sequence[Path]) -> dict[str, list[int]]:
    """Each file's size and modification time (ns), by path: a file overwritten between a run's jobs
    (a label map mended in place) is noticed without reading every file again."""
    stats = {}
    for path in files:
        try:
            found = path.stat()
        except OSError as exc:
            raise InputError(f"{path} cannot be read ({exc.strerror}); put it back, or fix the subject "
                             "table.") from None
        stats[str(path)] = [found.st_size, found.st_mtime_ns]
    return stats


def files_sha256(stats: dict[str, list[int]]) -> str:
    """sha256 over each file's path, size and modification time (`file_stats`)."""
    digest = hashlib.sha256()
    for path, (size, mtime_ns) in stats.items():
        digest.update(f"{path}\t{size}\t{mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _write_run_files(config: Config, folds: Sequence[Fold], out: Path, subjects: Sequence[Subject]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_resolved(config, out / RUN_FILES[0])
    if not (out / RUN_FILES[1]).exists():
        write_splits(folds, out / RUN_FILES[1])
    stats = file_stats(subject_files(subjects))
    _record_stats(out, stats)
    run = {"name": config.name, "config_hash": config_hash(config), "subjects_sha256": sha256_of(config.data.csv),
           "files_sha256": files_sha256(stats), "git_commit": git_commit(), "versions": versions(),
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "folds": [f.id for f in folds]}
    replace_text(out / "run.json", json.dumps(run, indent=2) + "\n")


def _check_same_run(config: Config, out: Path, subjects: Sequence[Subject],
                    files_unchanged: bool = False) -> list[Fold]:
    """A run folder already there must come from this very config, subject table and files (by
    their sizes and times: `_check_same_files`); its splits are reused."""
    run = read_run(out)
    kept = _kept_config(out)
    if run.get("config_hash") not in config_hashes(config, _recorded_folder(kept)):
        untrained = ("; no fold of it has trained yet (a job refused before training began), so removing the "
                     "folder loses nothing") if not any((out / "folds").glob("*/last.pt")) else ""
        raise InputError(f"{out} holds a run of a different config (hash {str(run.get('config_hash', '?'))[:12]}…); "
                         f"set another output_dir, or restore the config that made it{untrained}.")
    recorded = run.get("subjects_sha256")
    if recorded is not None and recorded != sha256_of(config.data.csv):
        raise InputError(f"{config.data.csv} has changed since the run in {out} began (its rows or the files they "
                         "name differ), so its folds would mix two tables; restore the table, or start a new run in "
                         "another output_dir.")
    _check_same_files(config, out, run, subjects, files_unchanged)
    _keep_class_codes(config, out, kept)
    return read_splits(out / "splits.csv")


def _check_same_files(config: Config, out: Path, run: dict[str, Any], subjects: Sequence[Subject],
                      files_unchanged: bool) -> None:
    """The files the subjects name must have the sizes and times the run recorded. Where their times
    alone changed (restored from a backup, checked out again), `files_unchanged` takes the user's word that
    they hold what they held: their times are recorded now (files.json, run.json), with a warning."""
    recorded = run.get("files_sha256")
    stats = file_stats(subject_files(subjects))
    if recorded is None or recorded == files_sha256(stats):
        return
    recorded_stats = _recorded_stats(out)
    alone = _times_alone_changed(recorded_stats, stats)
    if files_unchanged and alone:
        replace_text(out / "run.json", json.dumps({**run, "files_sha256": files_sha256(stats)}, indent=2) + "\n")
        _record_stats(out, stats)
        shown = ", ".join(alone[:3]) + (f" and {len(alone) - 3} more" if len(alone) > 3 else "")
        log.warning("%d file(s) %s names have new modification times at their recorded sizes (%s); taken as "
                    "unchanged (--files-unchanged), their times are recorded in %s", len(alone), config.data.csv,
                    shown, out / RUN_FILES[2])
        return
    word = (" if they hold what they held (restored without their times), run again with --files-unchanged;"
            " otherwise" if alone else "")
    raise InputError(f"a file {config.data.csv} names has changed since the run in {out} began (its size or "
                     f"modification time differ{_changed_files(recorded_stats, stats, run.get('created'))}), so its folds "
                     f"would mix two datasets;{word} restore the files as they were, or start a new run in another "
                     "output_dir.")


def _times_alone_changed(recorded: dict[str, list[int]] | None, stats: dict[str, list[int]]) -> list[str]:
    """The files whose modification time differs from the one the run's files.json (`recorded`)
    holds, where the same files are named at the same sizes (none where it could not be read, or
    anything else differs). run.json is written before files.json: a job stopped between the two
    leaves run.json holding the times taken, which passes."""
    if recorded is None or set(recorded) != set(stats):
        return []
    if any(not isinstance(recorded[path], list) or recorded[path][:1] != now[:1] for path, now in stats.items()):
        return []
    return [path for path, now in stats.items() if recorded[path] != now]


def _record_stats(out: Path, stats: dict[str, list[int]]) -> None:
    """Write the run's files.json: each named file's size and modification time (`file_stats`)."""
    replace_text(out / RUN_FILES[2], json.dumps(stats, indent=0) + "\n")


def _recorded_stats(out: Path) -> dict[str, Any] | None:
    """The run's files.json (`file_stats` when the run began); None where it cannot be read."""
    try:
        recorded = json.loads((out / RUN_FILES[2]).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _kept_config(out: Path) -> Any:
    """The run's config.yaml as YAML data; None where it cannot be read (read_run and export refuse
    such a file themselves)."""
    try:
        return yaml.safe_load((out / RUN_FILES[0]).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _recorded_folder(kept: Any) -> Path | None:
    """The output_dir the run's config.yaml (`kept`) records: where the run began."""
    folder = kept.get("output_dir") if isinstance(kept, dict) else None
    return Path(folder) if isinstance(folder, str) else None


def _changed_files(recorded: dict[str, Any] | None, stats: dict[str, list[int]], created: Any) -> str:
    """'; changed: <files, how>' from the run's files.json (`recorded`), where it could be read;
    else the files modified after the run's creation time (`_changed_since`)."""
    if recorded is None:
        return _changed_since(stats, created)
    changed = [f"{path} ({_how(recorded.get(path), now)})" for path, now in stats.items() if recorded.get(path) != now]
    return f"; changed: {', '.join(changed[:3])}{' and more' if len(changed) > 3 else ''}" if changed else ""


def _how(before: Any, now: list[int]) -> str:
    """How a file changed: its size, else its modification time (UTC, to the second)."""
    if not (isinstance(before, list) and len(before) == 2):
        return "not named when the run began"
    if before[0] != now[0]:
        return f"{before[0]} bytes then, {now[0]} now"
    stamp = [datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") for ns in (before[1], now[1])]
    return f"modified {stamp[0]} then, {stamp[1]} now (same size)"


def _changed_since(stats: dict[str, list[int]], created: Any) -> str:
    """'; modified since: <files>' for the files modified after the run's creation time (a second
    after it: the time is kept to the second), where any."""
    try:
        began = datetime.fromisoformat(str(created)).timestamp() + 1
    except ValueError:
        return ""
    later = [path for path, (_, mtime_ns) in stats.items() if mtime_ns / 1e9 > began]
    if not later:
        return "; none was modified after the run began: moved, copied without its times, or given an older one"
    return f"; modified since: {', '.join(later[:3])}{' and more' if len(later) > 3 else ''}"


def _keep_class_codes(config: Config, out: Path, kept: Any) -> None:
    """The run's config.yaml (`kept`, as read) takes the classes' codes and units of this config
    where they differ: they change no training (the hash leaves them out), and export reads them
    from there. It keeps the output_dir it records (where the run began), which the hash of a run of
    an earlier version holds."""
    resolved = resolved_dict(config)
    data = kept.get("data") if isinstance(kept, dict) else None
    if isinstance(data, dict) and data.get("classes") != resolved["data"]["classes"]:
        path = out / RUN_FILES[0]
        write_resolved(replace(config, output_dir=_recorded_folder(kept) or config.output_dir), path)
        log.info("%s: the classes' codes or units changed; the run's config.yaml now holds them", out)


@dataclass(frozen=True)
class Created:
    """What a new run made before training (files and folders that were not there): removed again
    if the run stops before any fold has finished an epoch, so that the same command runs once what
    stopped it is fixed. Nothing that was there before is touched."""

    files: tuple[Path, ...]
    folders: tuple[Path, ...]


def prepare(config: Config, resume: bool, fold_id: str | None,
            files_unchanged: bool = False) -> tuple[list[Subject], list[Fold], Created | None]:
    """The subjects and folds, and what was made now where this is a new run (None otherwise)."""
    subjects = read_subjects(config)
    out = config.output_dir
    _refuse_a_file_in_the_way(out)
    if (out / "run.json").is_file():
        if not resume and fold_id is None:
            raise InputError(f"{out} already holds a run; continue it with --resume, or set another output_dir.")
        return subjects, _check_same_run(config, out, subjects, files_unchanged), None
    _refuse_foreign(config, out)
    folds = subject_folds(config, subjects)
    _refuse_other_splits(folds, out / RUN_FILES[1])
    missing = [folder for folder in (out / "folds", out, *out.parents) if not folder.exists()]
    created = Created(files=tuple(out / name for name in (*RUN_FILES, "run.json") if not (out / name).exists()),
                      folders=tuple(reversed(missing)))
    _write_run_files(config, folds, out, subjects)
    return subjects, folds, created


def _refuse_other_splits(folds: Sequence[Fold], path: Path) -> None:
    """A splits.csv already there (from `trainer splits --write`) must hold these very splits; it is
    never replaced by others."""
    if not path.exists():
        return
    try:
        same = read_splits(path) == list(folds)
    except InputError:
        same = False
    if not same:
        raise InputError(f"{path} holds other splits than this config makes (or is no splits table); remove it or "
                         "choose another output_dir, so that a run never mixes two splits.")


def _refuse_a_file_in_the_way(out: Path) -> None:
    """InputError where output_dir, or the nearest of its parents that exists, is a file."""
    for folder in (out, *out.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise InputError(f"output_dir {out}: {folder} is a file, not a folder; set another output_dir.")
            return


def _refuse_foreign(config: Config, out: Path) -> None:
    """A folder without run.json is no run: a config.yaml other than this config's resolved form (the
    config's own file, say), a folds/ folder, or a file a run writes later (summary.csv, curves.png)
    there would be overwritten or mixed in."""
    if (out / "folds").exists():
        raise InputError(f"{out} holds a folds/ folder but no run.json, so it is no run of the trainer's; set "
                         "another output_dir.")
    for name in LATER_FILES:
        if (out / name).exists() or (out / name).is_symlink():
            raise InputError(f"{out} holds a {name} but no run.json, so it is no run of the trainer's and a run "
                             "would replace that file; set another output_dir.")
    path = out / RUN_FILES[0]
    if path.exists():
        try:
            ours = yaml.safe_load(path.read_text(encoding="utf-8")) == resolved_dict(config)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            ours = False
        if not ours:
            raise InputError(f"{out} holds a {RUN_FILES[0]} but no run.json, so it is no run of the trainer's and a "
                             "run would replace that file; set another output_dir.")


def _fold_folders(out: Path) -> set[Path]:
    folder = out / "folds"
    return {child for child in folder.iterdir() if child.is_dir()} if folder.is_dir() else set()


def _remove_unstarted(created: Created, out: Path, fold_folders: set[Path]) -> None:
    """Undo `created`, and remove the fold folders made since (`fold_folders` were there before),
    unless a fold has finished an epoch."""
    if any((out / "folds").glob("*/last.pt")):
        return
    for folder in sorted(_fold_folders(out) - fold_folders):
        shutil.rmtree(folder)
    for path in created.files:
        path.unlink(missing_ok=True)
    for folder in reversed(created.folders):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def fit(config: Config, fold_id: str | None = None, resume: bool = False,
        say: Callable[[str], None] = print, files_unchanged: bool = False) -> list[dict[str, Any]]:
    """Train every fold (or one), then summarise the folds trained so far. `say` gets one line per
    epoch (and the warnings that come once nothing can refuse the run). `files_unchanged`: a run
    already there goes on where the subject files' modification times alone changed
    (`_check_same_files`)."""
    dist = Distributed.from_environment(config.training.device)
    created, fold_folders = None, _fold_folders(config.output_dir)
    try:
        if dist.is_main:
            subjects, folds, created = prepare(config, resume, fold_id, files_unchanged)
        else:
            subjects, folds, created = read_subjects(config), [], None
        dist.barrier()
        if not dist.is_main:
            folds = read_splits(config.output_dir / "splits.csv")
        selected = [select_fold(folds, fold_id)] if fold_id else folds
        needed = {s for f in selected for s in (*f.train, *f.val, *f.test)}
        if not resume:
            for fold in selected:
                _refuse_trained(config, fold)
        samples = load_samples(config, [s for s in subjects if s.subject_id in needed])
        if config.data.ignore_value is not None:
            for fold in selected:
                refuse_unannotated(fold.id, {role: [samples[s] for s in ids]
                                             for role, ids in (("training", fold.train), ("validation", fold.val))},
                                   config.training.early_stopping.metric)
            empty = [sample.subject_id for sample in samples.values() if not is_annotated(sample)]
            if empty and dist.is_main:
                say(f"warning: subject(s) {', '.join(empty[:10])}{' and more' if len(empty) > 10 else ''} hold "
                    "data.ignore_value alone: nothing of them is annotated, so they train and score nothing")
        note = cpu_note(config.training.device, dist.device)
        if note and dist.is_main:
            log.warning(note)
        for warning in (target_scale_warning(config, subjects), subject_id_warning(subjects),
                        one_class_warning(config, subjects, selected),
                        *missing_class_warnings(config, subjects, selected),
                        *absent_class_warnings(config, selected, samples)):
            if warning is not None and dist.is_main:
                say(warning)
        clock = RunClock(config.training.epochs * len(selected))
        results = [_fit_fold(config, fold, samples, dist, resume, clock, say if dist.is_main else _quiet)
                   for fold in selected]
        results = [r for r in results if r]  # only rank 0 reports
        if dist.is_main:
            for warning in write_summary(config.output_dir):
                say(warning)
        return results
    except BaseException:                            # Ctrl-C and stop signals too
        if created is not None and fold_id is None:  # a job of an array leaves the shared run files to the others
            _remove_unstarted(created, config.output_dir, fold_folders)
        raise
    finally:
        dist.close()


def _quiet(line: str) -> None:
    """What the ranks other than the first say: nothing."""


def _fit_fold(config: Config, fold: Fold, samples: dict, dist: Distributed, resume: bool, clock: RunClock,
              say: Callable[[str], None]) -> dict[str, Any]:
    folder = config.output_dir / "folds" / fold.id
    trainer = FoldTrainer(config, fold, samples, folder, dist, clock=clock, say=say)
    if resume:
        trainer.resume()
    else:
        _refuse_trained(config, fold)
    return trainer.fit()


def _refuse_trained(config: Config, fold: Fold) -> None:
    folder = config.output_dir / "folds" / fold.id
    if (folder / "result.json").is_file():
        raise InputError(f"fold {fold.id} was already trained in {folder}; use --resume to continue it.")
    if (folder / "last.pt").is_file():
        raise InputError(f"fold {fold.id} began training in {folder} and stopped before its last epoch; continue it "
                         "with --resume.")


def write_summary(out: Path) -> list[str]:
    """Mean ± std over the folds that have finished, as the paper's tables report them. Returns a
    warning for each fold's result.json that cannot be read (another job's, damaged), which the
    summary leaves out: the job that trained its own fold does not fail for it."""
    results, warnings = [], []
    for path in sorted((out / "folds").glob("*/result.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            splits = ("validation", "testing")
            if not isinstance(result, dict) or not all(isinstance(result.get(split), dict) for split in splits):
                raise ValueError("no validation and testing metrics in it")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            fold = path.parent.name
            warnings.append(f"warning: {path} cannot be read ({exc}); summary.csv leaves fold {fold} out: "
                            f"`trainer fit <config> --fold {fold} --resume` writes it again from the fold's last.pt")
            continue
        results.append({**result, "fold": path.parent.name})
    if not results:
        return warnings
    lines = ["split,metric,mean,std,folds"]
    for split in ("validation", "testing"):
        keys = list(dict.fromkeys(k for r in results for k in r[split]))
        for key in keys:
            values = [r[split][key] for r in results if isinstance(r[split].get(key), (int, float))]
            if values:
                mean, std = metrics.mean_std(values)
                lines.append(f"{split},{key},{mean:.6g},{std:.6g},{len(values)}")
    for split, outer in (("testing_outer_folds", outer_fold_testing(results)),
                         ("testing_outer_ensembles", outer_fold_ensembles(out, results))):
        for key, values in outer.items():
            mean, std = metrics.mean_std(values)
            lines.append(f"{split},{key},{mean:.6g},{std:.6g},{len(values)}")
    replace_text(out / "summary.csv", "\n".join(lines) + "\n")
    return warnings
