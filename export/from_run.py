"""`export build RUN --onnx`: a training run folder becomes one versioned model.

Each chosen fold's best checkpoint is exported to ONNX and checked against torch; the folds become
one ensemble graph (probabilities averaged inside the graph, so one call per window runs every
fold); the manifest is written from the run's resolved config (a histology run's `slide` section
too, so `runtime predict slide.svs` needs no flags); sample inputs and their outputs are
stored so any machine can prove the model still gives the same numbers. Export reads only the run
folder's config.yaml, run.json, result.json files and checkpoints (with `weights_only=True`): it
never needs the training data and never executes code from the run folder.
"""
from __future__ import annotations

import csv
import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch

from export import __version__
from export.ensemble import ensemble_graph
from export.half import LabelRule, fp16_check
from export.onnx_export import DEFAULT_TOLERANCE, check_parity, export_fold
from export.triton import copy_adapter, record_version
from export.versions import VersionCheck, staged_version
from runtime.errors import InputError, ManifestError, ModelError, brief
from runtime.jsonfile import Unreadable, read_json
from runtime.triton.bytecode import CACHE_DIR
from runtime.manifest import (LABEL_IGNORE, LABEL_RELABEL, TABLE_COLUMNS, TRAINED_ON, Manifest, OnnxSpec, OutputSpec,
                              sha256_of, subject_hash, write_manifest)
from runtime.commands.verify import runs_batches, smooth_field, store_samples

log = logging.getLogger(__name__)

ENSEMBLE_FILE = "model.onnx"


@dataclass(frozen=True)
class FoldRun:
    fold_id: str
    checkpoint: Path
    result: dict[str, Any]

    def validation_metric(self) -> float | None:
        value = self.result.get("validation", {}).get(self.result.get("monitored", ""))
        return float(value) if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class Run:
    folder: Path
    config: Any            # trainer.config.Config
    info: dict[str, Any]   # run.json
    folds: tuple[FoldRun, ...]


# run.json holds the folds' results and the run's settings: far below this.
MAX_RUN_JSON_BYTES = 16 * 2**20


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path, MAX_RUN_JSON_BYTES)
    except Unreadable as error:
        raise InputError(f"{path}: {error.reason}; is this a complete `trainer fit` run folder?") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} holds a {type(data).__name__}, not an object; is this a complete `trainer fit` run "
                         "folder?")
    return data


def read_run(folder: Path) -> Run:
    """The run's resolved config, its run.json and every fold that has a best checkpoint."""
    from trainer.config import config_hashes, parse_config
    from trainer.yamlio import read_yaml_file

    folder = Path(folder)
    for needed in ("config.yaml", "run.json"):
        if not (folder / needed).is_file():
            raise InputError(f"{folder} has no {needed}: pass the output folder of `trainer fit`.")
    data = read_yaml_file(folder / "config.yaml", "config", InputError, "pass the output folder of `trainer fit`")
    config = parse_config(data, folder / "config.yaml")
    info = _read_json(folder / "run.json")
    if info.get("config_hash") not in config_hashes(config):
        raise InputError(f"{folder / 'config.yaml'} is not the config this run was trained with (its hash differs "
                         "from run.json's); restore it.")
    folds = tuple(_fold(folder / "folds" / fold_id, fold_id) for fold_id in info.get("folds", [])
                  if (folder / "folds" / fold_id).is_dir())
    if not folds:
        raise InputError(f"{folder} holds no trained fold (folds/<t.v>/); train with `trainer fit` first.")
    return Run(folder=folder, config=config, info=info, folds=folds)


def _fold(folder: Path, fold_id: str) -> FoldRun:
    checkpoint = folder / "best.pt"
    result = _read_json(folder / "result.json") if (folder / "result.json").is_file() else {}
    return FoldRun(fold_id=fold_id, checkpoint=checkpoint, result=result)


def select_folds(run: Run, selection: str) -> list[FoldRun]:
    """all | best-K (by validation metric) | a comma-separated list of fold ids; each finished (its
    result.json written when its training ended) with its checkpoint. `all` is every fold of the
    run's splits: a run with folds still to train (or training: a best.pt without a result.json)
    is refused, naming the finished ones to export explicitly, rather than exported as a smaller
    ensemble than asked."""
    finished = [f.fold_id for f in run.folds if f.result and f.checkpoint.is_file()]
    if selection == "all":
        missing = [fold_id for fold_id in run.info.get("folds", []) if fold_id not in finished]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            remedy = f"export the finished ones with --folds {','.join(finished)}" if finished else "train them first"
            verb = "has" if len(missing) == 1 else "have"
            raise InputError(f"{len(missing)} of the run's {len(run.info.get('folds', []))} folds {verb} not finished "
                             f"({shown}); finish them (trainer fit --resume), or {remedy}.")
    chosen = _choose(run, selection)
    for fold in chosen:
        if fold.fold_id not in finished:
            raise InputError(f"fold {fold.fold_id} has not finished training (no result.json in "
                             f"{Path(fold.checkpoint).parent}); finish or resume its training, or leave it out with "
                             "--folds.")
    return chosen


def _choose(run: Run, selection: str) -> list[FoldRun]:
    if selection == "all":
        return list(run.folds)
    if selection.startswith("best-"):
        return _best(run, selection)
    wanted = [s.strip() for s in selection.split(",") if s.strip()]
    twice = sorted({w for w in wanted if wanted.count(w) > 1})
    if twice:
        raise InputError(f"--folds {selection!r} names fold {', '.join(twice)} twice; give each fold once.")
    by_id = {f.fold_id: f for f in run.folds}
    unknown = [w for w in wanted if w not in by_id]
    if unknown or not wanted:
        raise InputError(f"--folds {selection!r}: unknown fold(s) {', '.join(unknown) or '(none given)'}; "
                         f"this run has {', '.join(by_id)}; or use all / best-K.")
    return [by_id[w] for w in wanted]


def _best(run: Run, selection: str) -> list[FoldRun]:
    count = selection[len("best-"):]
    if not count.isdigit() or int(count) < 1:
        raise InputError(f"--folds {selection!r}: write best-K with K a positive integer, e.g. best-3.")
    scored = [f for f in run.folds if f.validation_metric() is not None and f.checkpoint.is_file()]
    if len(scored) < int(count):
        raise InputError(f"--folds {selection}: only {len(scored)} fold(s) have a validation metric.")
    mode = run.config.training.early_stopping.mode
    scored.sort(key=lambda f: f.validation_metric(), reverse=mode == "max")  # type: ignore[arg-type, return-value]
    return sorted(scored[: int(count)], key=lambda f: f.fold_id)


def load_fold_model(fold: FoldRun, run: Run | None = None) -> torch.nn.Module:
    """The fold's network from its checkpoint, loaded with weights_only=True; with its `run`, the
    checkpoint is first held to it: the fold it names, the config hash it was trained under (where
    it records one) and its network's spec must be the fold's and the run's (ModelError)."""
    from trainer.models import ModelSpec, build_model

    try:
        saved = torch.load(fold.checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelError(f"checkpoint {fold.checkpoint} cannot be loaded ({type(exc).__name__}: {brief(exc)}); it is "
                         "damaged or not a trainer checkpoint.") from None
    if not isinstance(saved, dict) or not {"model", "model_spec"} <= set(saved):
        raise ModelError(f"checkpoint {fold.checkpoint} lacks model weights or model_spec; it is not a trainer checkpoint.")
    if run is not None:
        _check_owner(saved, fold, run)
    model = build_model(ModelSpec.from_dict(saved["model_spec"]))
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {fold.checkpoint} does not fit its model spec ({str(exc).splitlines()[0]}).") from None
    return model.eval()


def _check_owner(saved: dict[str, Any], fold: FoldRun, run: Run) -> None:
    """ModelError where a checkpoint was copied in from another fold or another run."""
    from trainer.config import config_hashes
    from trainer.fold import model_spec

    remedy = "put the fold's own best.pt back (or train the fold again)"
    owner = saved.get("fold")
    if owner is not None and str(owner) != fold.fold_id:
        raise ModelError(f"checkpoint {fold.checkpoint} was saved by fold {owner}, not by fold {fold.fold_id} whose "
                         f"folder holds it; {remedy}.")
    trained_under = saved.get("config_hash")
    if trained_under is not None and trained_under not in {run.info.get("config_hash"), *config_hashes(run.config)}:
        raise ModelError(f"checkpoint {fold.checkpoint} was trained under another config (hash "
                         f"{str(trained_under)[:12]}…) than this run's {run.folder / 'config.yaml'}; {remedy}.")
    if saved["model_spec"] != model_spec(run.config).to_dict():
        raise ModelError(f"checkpoint {fold.checkpoint} holds another network than {run.folder / 'config.yaml'} "
                         f"describes (its model_spec differs); it comes from another run: {remedy}.")


def _activation(task: str) -> str:
    """What turns a fold's raw output into the values the folds are averaged on."""
    return "none" if task == "regression" else "softmax"


def sample_inputs(config: Any, samples: Sequence[Path], seed: int = 0) -> list[np.ndarray]:
    """Model inputs (1, C, *patch): central windows of given scans after preprocessing, else a smooth
    random field, so parity is checked on realistic values and not on noise alone."""
    from runtime.io import read_scan, to_model_axes
    from runtime.preprocess import Volume, run_steps

    patch = tuple(config.inference.patch_size)
    inputs = []
    for path in samples:
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        try:
            array_zyx, spacing_zyx = _sample(config, read_scan(paths), paths)
            array, spacing = to_model_axes(array_zyx, spacing_zyx, config.axis_order)
            volume, _ = run_steps(Volume.from_array(array, spacing), config.preprocessing, min_shape=patch)
        except InputError as exc:
            raise InputError(f"--sample {', '.join(map(str, paths))}: {exc}") from None
        start = [(n - p) // 2 for n, p in zip(volume.array.shape[1:], patch)]
        window = volume.array[(slice(None), *(slice(s, s + p) for s, p in zip(start, patch)))]
        inputs.append(np.ascontiguousarray(window[np.newaxis], dtype=np.float32))
    inputs.append(smooth_field(len(config.data.channels), patch, seed))
    return inputs


def _sample(config: Any, scan: Any, paths: Sequence[Path]) -> tuple[np.ndarray, tuple[float, ...]]:
    """A sample scan as the model reads it: its channels checked against the config's, and a
    volume given to a 2D model cut to its middle slice, as the runtime runs it slice by slice."""
    channels = len(config.data.channels)
    if scan.array_zyx.shape[0] != channels:
        colour = " (a colour image's components are channels)" if scan.array_zyx.shape[0] in (3, 4) else ""
        raise InputError(f"it gives {scan.array_zyx.shape[0]} channel(s){colour} where the model takes {channels} "
                         f"({', '.join(config.data.channels)}); give one image per channel, as training did.")
    if scan.spatial_dims < config.dimensions:
        raise InputError(f"it is a {scan.spatial_dims}D image and the model is {config.dimensions}D; give a volume.")
    if scan.spatial_dims > config.dimensions:
        middle = scan.array_zyx.shape[1] // 2
        return np.ascontiguousarray(scan.array_zyx[:, middle]), tuple(scan.spacing_zyx[1:])
    return scan.array_zyx, tuple(scan.spacing_zyx)


def _input_profile(run: Run) -> dict[str, Any] | None:
    """What the run's subjects look like as read (trainer.data.input_profile), where the subject
    table is still there to read; a run whose data moved is exported without one, with a warning."""
    from trainer.data import input_profile
    from trainer.subjects import read_subjects

    try:
        return input_profile(run.config, read_subjects(run.config))
    except InputError as exc:
        log.warning("no input profile: the run's subjects cannot be read (%s); the runtime will not hold scans "
                    "against what the model saw in training", str(exc).splitlines()[0])
        return None


def _manifest(run: Run, name: str, version: int, folds: list[FoldRun], rule: str, opset: int,
              files: dict[str, str], parity: dict[str, float], fp16: dict[str, Any],
              records: dict[str, Any]) -> Manifest:
    config = run.config
    return Manifest(
        schema_version=1, name=name, version=version, task=config.task, modality=config.modality,
        dimensions=config.dimensions, axis_order=config.axis_order, channels=tuple(config.data.channels),
        classes=tuple(config.classes), preprocessing=tuple(config.preprocessing), window=config.inference,
        output=OutputSpec(activation="none", label_rule="argmax", threshold=0.5, ensemble=rule),
        onnx=OnnxSpec(file=ENSEMBLE_FILE, input="input", output="output", opset=opset, fp16=fp16["allowed"]),
        files=files, provenance={**_provenance(run, folds, parity), "fp16_check": fp16, **records},
        slide=config.slide,
    )


def _provenance(run: Run, folds: list[FoldRun], parity: dict[str, float]) -> dict[str, Any]:
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": f"medflow export {__version__}",
        "source_run": run.folder.name, "run_name": run.info.get("name"),
        "config_hash": run.info.get("config_hash"), "git_commit": run.info.get("git_commit"),
        "trainer_versions": run.info.get("versions"),
        "folds": [{"id": f.fold_id, "best_epoch": f.result.get("best_epoch"),
                   "validation": f.result.get("validation", {}), "testing": f.result.get("testing", {})}
                  for f in folds],
        "parity_max_abs_diff": parity,
        TABLE_COLUMNS: {"subject": run.config.data.subject_column, "label": run.config.data.label},
        **({LABEL_RELABEL: {str(k): int(v) for k, v in run.config.data.relabel.items()}}
           if run.config.data.relabel else {}),
        **({LABEL_IGNORE: run.config.data.ignore_value} if run.config.data.ignore_value is not None else {}),
    }


def _trained_on(run: Run, folds: list[FoldRun]) -> dict[str, Any] | None:
    """The subjects any of `folds` trained or validated on (its model was chosen on those), by their
    ids hashed with a salt of this version's (runtime.manifest.subject_hash); the testing subjects
    of the folds, held out from all of them, are not among them. A histology run records the slides
    its patches came from (their data.group_column), which a --csv run of slides names, not the
    patches. None, with a warning, where the splits or the patch table cannot be read."""
    from trainer.splits import read_splits

    chosen = {fold.fold_id for fold in folds}
    try:
        ids = {subject for fold in read_splits(run.folder / "splits.csv") if fold.id in chosen
               for subject in (*fold.train, *fold.val)}
        if run.config.modality == "histology" and run.config.data.group_column:
            ids = _slides_of(run, ids)
    except (InputError, OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("no record of the subjects the model trained on (%s): runtime predict --csv will not warn of "
                    "them", brief(exc))
        return None
    salt = secrets.token_hex(8)
    return {"salt": salt, "subjects": sorted(subject_hash(salt, subject) for subject in ids)}


def _slides_of(run: Run, patches: set[str]) -> set[str]:
    """The slides (data.group_column of the run's patch table) the `patches` came from, read from
    the table alone."""
    data = run.config.data
    with open(data.csv, newline="", encoding="utf-8-sig") as handle:
        return {row[data.group_column].strip() for row in csv.DictReader(handle)
                if (row.get(data.subject_column) or "").strip() in patches and row.get(data.group_column)}


def build_from_run(run_dir: Path, repository: Path, name: str | None = None, folds: str = "all",
                   samples: Sequence[Path] = (), tolerance: float = DEFAULT_TOLERANCE, rule: str = "mean",
                   check: VersionCheck | None = None, record_subjects: bool = True) -> Path:
    """Export the run as the next version of its model; returns the version folder. `check` may
    refuse the version first (`export.versions.staged_version`); `record_subjects` False leaves
    out the record of the subjects it trained on (`_trained_on`)."""
    run = read_run(run_dir)
    if rule == "vote" and run.config.task != "classification":
        raise InputError(f"--ensemble vote is for classification models; this run is {run.config.task}.")
    chosen = select_folds(run, folds)
    name = name or run.config.name
    models = [load_fold_model(f, run) for f in chosen]
    inputs = sample_inputs(run.config, samples)
    profile = _input_profile(run)
    trained = _trained_on(run, chosen) if record_subjects else None
    records = {**({"input_profile": profile} if profile else {}), **({TRAINED_ON: trained} if trained else {})}
    model_dir = Path(repository) / name
    with staged_version(model_dir, check) as (version, staging):
        fold_graphs, parity = _export_folds(models, chosen, inputs, staging, tolerance, run.config.axis_order)
        activation = _activation(run.config.task)
        ensemble = ensemble_graph(fold_graphs, run.config.task, activation=activation, rule=rule,
                                  names=[f.fold_id for f in chosen])
        onnx.save(ensemble, str(staging / ENSEMBLE_FILE))
        parity["ensemble"] = _ensemble_parity(models, staging / ENSEMBLE_FILE, inputs, run.config.task,
                                              activation, tolerance)
        window = run.config.inference
        store_samples(staging, ENSEMBLE_FILE, "input", "output", inputs, f"the ensemble of run {run_dir}",
                      batched=runs_batches(run.config.modality, window.mode, window.batch_size))
        copy_adapter(staging)
        files = {str(p.relative_to(staging)): sha256_of(p) for p in sorted(staging.rglob("*"))
                 if p.is_file() and CACHE_DIR not in p.relative_to(staging).parts}
        labelling = LabelRule(run.config.task, "none", "argmax", 0.5, len(run.config.classes))
        fp16 = fp16_check(staging / ENSEMBLE_FILE, "input", "output", inputs, labelling)
        manifest = _manifest(run, name, version, chosen, rule, _opset(ensemble), files, parity, fp16, records)
        write_manifest(manifest, staging)
    record_version(model_dir, manifest)
    return model_dir / str(version)


def _export_folds(models: list[torch.nn.Module], chosen: list[FoldRun], inputs: list[np.ndarray], staging: Path,
                  tolerance: float, axis_order: str) -> tuple[list[onnx.ModelProto], dict[str, float]]:
    (staging / "folds").mkdir()
    graphs, parity = [], {}
    for model, fold in zip(models, chosen):
        path = staging / "folds" / f"fold_{fold.fold_id}.onnx"
        graphs.append(export_fold(model, torch.from_numpy(inputs[-1]), path, axis_order=axis_order))
        parity[fold.fold_id] = check_parity(model, path, inputs, tolerance,
                                            shown=f"fold {fold.fold_id}'s ONNX export").max_abs_diff
        log.info("fold %s exported; max |torch - onnx| = %.2g", fold.fold_id, parity[fold.fold_id])
    return graphs, parity


def _ensemble_parity(models: list[torch.nn.Module], path: Path, inputs: list[np.ndarray], task: str,
                     activation: str, tolerance: float) -> float:
    """The ensemble graph against the mean of the folds' probabilities computed in torch."""
    from runtime.backends import open_backend

    backend = open_backend(path, "input", "output", device="cpu")
    worst = 0.0
    for array in inputs:
        with torch.no_grad():
            outputs = [m(torch.from_numpy(array)).float() for m in models]
        if activation == "softmax":
            outputs = [torch.softmax(o, dim=1) for o in outputs]
        elif activation == "sigmoid":
            outputs = [torch.sigmoid(o) for o in outputs]
        expected = torch.stack(outputs).mean(0).numpy()
        worst = max(worst, float(np.max(np.abs(backend(array) - expected))))
    if worst > tolerance:
        raise ModelError(f"the ensemble graph differs from the mean of its folds by {worst:.3g} (tolerance "
                         f"{tolerance:g}); the export is refused.")
    return worst


def _opset(model: onnx.ModelProto) -> int:
    for item in model.opset_import:
        if item.domain in ("", "ai.onnx"):
            return int(item.version)
    raise ManifestError("the ensemble graph declares no default-domain opset")
