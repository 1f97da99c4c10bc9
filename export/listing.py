"""`export list`: what a model repository holds, one line per version (its precision read from its graph,
its files held to their checksums and its digest to the one config.pbtxt records: a version that
fails is listed invalid, with why), then any stale staging folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.digests import DigestMismatch, check_config_digest, config_digests, load_as_exported
from runtime.errors import InputError, ManifestError, MedflowError
from runtime.manifest import MANIFEST_FILE, Manifest, is_windows_companion
from runtime.staging import stale_folders

SHORT_DIGEST = len("sha256:") + 12


def _size(folder: Path) -> str:
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return f"{total / 1e6:.1f} MB"


# The metrics a listing shows first, before each class's Dice; the others stay in the manifest.
_HEADLINE = ("dice_mean", "balanced_accuracy", "accuracy", "auc", "mse", "mae")


def _metrics(manifest: Manifest) -> str:
    """Mean over the ensemble's folds of each validation metric recorded at export."""
    folds = manifest.provenance.get("folds") or []
    recorded = list(dict.fromkeys(k for f in folds for k in f.get("validation", {}) if k != "loss"))
    headline = [k for k in _HEADLINE if k in recorded]
    keys = headline + [k for k in recorded if k.startswith("dice_") and k not in headline]
    if not keys:
        return "-"
    values = {k: [f["validation"][k] for f in folds if isinstance(f.get("validation", {}).get(k), (int, float))]
              for k in keys}
    means = {k: float(np.mean(v)) for k, v in values.items() if v}
    return ", ".join(f"{k} {v:.3f}" for k, v in list(means.items())[:3])


def _precision(manifest: Manifest, folder: Path) -> str:
    """int8, fp16 (half-precision weights) or fp32, and where a GPU may run an fp32 graph in fp16."""
    from export.quantize_source import version_precision

    try:
        precision = version_precision(manifest, folder)
    except MedflowError:
        return "?"
    except ImportError:             # onnx, of the export extra, reads the graph: without it, the manifest says
        return "int8" if "quantization" in manifest.provenance else "?"
    short = {"int8": "int8", "float16": "fp16", "float32": "fp32"}[precision]
    return f"{short} (fp16 on GPU)" if manifest.onnx.fp16 and precision == "float32" else short


def _row(folder: Path) -> list[str]:
    if folder.is_symlink():                    # its size would be that of wherever it leads, walked
        return [folder.parent.name, folder.name, "invalid", "-", "-", "a link, not a version folder", "-", "-", "-"]
    try:
        manifest, _ = load_as_exported(folder)               # every file against its checksum
        check = check_config_digest(folder)
        digest = check.digest[:SHORT_DIGEST]
    except MedflowError as exc:
        return [folder.parent.name, folder.name, "invalid", "-", "-", _reason(exc, folder), "-", _size(folder), "-"]
    nnunet = manifest.provenance.get("nnunet")
    folds = manifest.provenance.get("folds") or (nnunet.get("folds") if isinstance(nnunet, dict) else None)
    return [manifest.name, str(manifest.version), manifest.task, _precision(manifest, folder),
            str(len(folds)) if isinstance(folds, list) and folds else "-", _metrics(manifest),
            str(manifest.provenance.get("created", "-")),
            _size(folder), digest]


# Characters of an invalid version's reason in its row; past them, verify says the whole of it.
REASON_CHARS = 100


def _reason(error: MedflowError, folder: Path) -> str:
    """Why a version is invalid, short enough for its row (the files of its folder by their names
    in it, as the row names the version): a digest its config.pbtxt records otherwise is said as such."""
    if isinstance(error, DigestMismatch):
        return "its digest is not the one config.pbtxt records (verify says more)"
    text = " ".join(str(error).replace(f"{folder}/", "").split())
    if len(text) <= REASON_CHARS:
        return text
    cut = text[:REASON_CHARS].rsplit(" ", 1)[0]
    return f"{cut} ... (verify says more)"


def _plain_triton_model(model_dir: Path) -> bool:
    """A Triton model that is no version of the runtime's (the `<name>_onnx` bare graph of
    `--triton-onnx`, say): its config.pbtxt records no digest and no version holds a manifest."""
    try:
        recorded = config_digests(model_dir)
    except ManifestError:
        return False
    return recorded == {} and not any((version / MANIFEST_FILE).is_file() for version in model_dir.iterdir())


def _runtime_model(folder: Path) -> bool:
    return folder.is_dir() and not folder.name.startswith(".") and not is_windows_companion(folder) \
        and not _plain_triton_model(folder)


def describe_repository(repository: Path) -> str:
    if not repository.is_dir():
        raise InputError(f"{repository} is not a folder; pass a model repository such as model_repository/.")
    rows = [["model", "version", "task", "precision", "folds", "validation (mean over folds)", "created", "size",
             "digest"]]
    stale = []
    for model_dir in sorted(p for p in repository.iterdir() if _runtime_model(p)):
        versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        rows += [_row(v) for v in versions]
        stale += [s.describe() for s in stale_folders(model_dir)]
    if len(rows) == 1:
        return "\n".join([f"{repository} holds no model version.", *stale])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows] + stale)
