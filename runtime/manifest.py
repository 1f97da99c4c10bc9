"""The model manifest: what a model expects, how to prepare its input and how to read its output.

`manifest.json` sits in every model version folder (`model_repository/<name>/<version>/`). Export
writes it; the runtime validates it on load and refuses unknown keys, missing keys, other schema
versions, values beyond `runtime.limits`, file entries that leave the version folder and files whose
sha256 differs from the one recorded. Nothing is migrated silently.

A version has one digest, `version_digest`: "sha256:" and the sha256 of the manifest's canonical
JSON. The manifest records the sha256 of every file and loading verifies them, so the digest covers
the whole version; a deployment pins it (`check_digest`) and Triton's config records it.

Every per-axis value (patch size, spacing, shape) is given in the model's own array axis order,
`axis_order`, which is how the model saw its training arrays.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from runtime import limits
from runtime.jsonfile import Unreadable, read_bytes
from runtime.contract import (
    MODALITIES, TASKS, ClassSpec, OutputSpec, SlideSpec, WindowSection, check_logits_window, parse_axis_order,
    parse_channels, parse_class_list, parse_dimensions, parse_name, parse_output, parse_slide, parse_step_list,
    parse_window_section,
)
from runtime.errors import InputError, ManifestError
from runtime.preprocess.steps import Step
from runtime.validation import Problems, check_keys, choice, is_int, is_number, is_number_name, resolves_inside

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
DIGEST_PREFIX = "sha256:"
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class OnnxSpec:
    """The model file and its tensors. `fp16`: the model may run in half precision on a GPU
    (export found its labels unchanged in half precision; TensorRT then builds an fp16 engine).
    `sample_tolerance`: backend name -> the largest difference from the stored sample outputs that
    `runtime verify` accepts there (relative to the output's magnitude); written for an int8 version,
    whose backends round differently, with the backends it was measured on; empty: 1e-4 everywhere."""

    file: str
    input: str
    output: str
    opset: int
    fp16: bool = False
    sample_tolerance: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    name: str
    version: int
    task: str
    modality: str
    dimensions: int
    axis_order: str
    channels: tuple[str, ...]
    classes: tuple[ClassSpec, ...]
    preprocessing: tuple[Step, ...]
    window: WindowSection
    output: OutputSpec
    onnx: OnnxSpec
    files: Mapping[str, str]
    provenance: Mapping[str, Any]
    slide: SlideSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocessing"] = [{"name": s.name, "params": dict(s.params)} for s in self.preprocessing]
        data["classes"] = [{key: value for key, value in entry.items() if value is not None} for entry in data["classes"]]
        if self.slide is None:
            del data["slide"]
        if self.output.probabilities is None:
            del data["output"]["probabilities"]
        if not self.onnx.fp16:
            del data["onnx"]["fp16"]
        if not self.onnx.sample_tolerance:
            del data["onnx"]["sample_tolerance"]
        return data


def _raise_if_any(problems: Problems, source: str) -> None:
    problems.raise_if_any(
        ManifestError, f"{source} is not a valid manifest (schema {SCHEMA_VERSION}): ",
        ". Re-export the model with this version of `export`.",
    )


def _string(value: Any, where: str, problems: Problems) -> None:
    if not isinstance(value, str) or not value:
        problems.add(where, f"must be a non-empty string, got {value!r}")


_TOP_KEYS = (
    "schema_version", "name", "version", "task", "modality", "dimensions", "axis_order",
    "channels", "classes", "preprocessing", "window", "output", "onnx", "files", "provenance",
)
_OPTIONAL_KEYS = ("slide",)
_ONNX_KEYS = ("file", "input", "output", "opset")
_ONNX_OPTIONAL = ("fp16", "sample_tolerance")
MAX_SAMPLE_TOLERANCE = 10.0


def _parse_onnx(data: Any, problems: Problems) -> OnnxSpec | None:
    if not check_keys(data, "onnx", _ONNX_KEYS, _ONNX_OPTIONAL, problems=problems):
        return None
    for key in ("file", "input", "output"):
        _string(data[key], f"onnx.{key}", problems)
    if not (is_int(data["opset"]) and data["opset"] >= 7):
        problems.add("onnx.opset", f"must be an integer >= 7, got {data['opset']!r}")
    if isinstance(data["file"], str) and (_path_problem(data["file"]) or "/" in data["file"]):
        problems.add("onnx.file", f"must be a file name inside the version folder, got {data['file']!r}")
    fp16 = data.get("fp16", False)
    if not isinstance(fp16, bool):
        problems.add("onnx.fp16", f"must be true or false, got {fp16!r}")
    return OnnxSpec(file=data["file"], input=data["input"], output=data["output"], opset=data["opset"],
                    fp16=fp16 is True, sample_tolerance=_sample_tolerance(data.get("sample_tolerance", {}), problems))


def _sample_tolerance(data: Any, problems: Problems) -> dict[str, float]:
    """Backend name -> tolerance: at most 16 names of at most 64 characters, each tolerance a number
    above 0 and at most MAX_SAMPLE_TOLERANCE."""
    if not (isinstance(data, dict) and len(data) <= 16):
        problems.add("onnx.sample_tolerance", f"must map at most 16 backend names to tolerances, got {data!r}")
        return {}
    for name, value in data.items():
        if not (isinstance(name, str) and 0 < len(name) <= 64):
            problems.add("onnx.sample_tolerance", f"backend names must be 1 to 64 characters, got {name!r}")
        if not (is_number(value) and 0 < value <= MAX_SAMPLE_TOLERANCE):
            problems.add(f"onnx.sample_tolerance[{name!r}]", f"must be a number above 0 and at most "
                         f"{MAX_SAMPLE_TOLERANCE:g}, got {value!r}")
    return {str(name): float(value) for name, value in data.items() if is_number(value)}


def _path_problem(name: str) -> str | None:
    """What keeps `name` from being a path inside the version folder: relative, '/'-separated segments,
    none of them empty, '.' or '..', no backslash and no NUL."""
    if not name or name.startswith("/"):
        return "must be a path relative to the version folder"
    if "\\" in name or "\0" in name:
        return "must not hold a backslash or a NUL character"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "must not hold empty, '.' or '..' segments"
    return None


def _parse_files(data: Any, problems: Problems) -> dict[str, str]:
    if not isinstance(data, dict) or not data:
        problems.add("files", f"must map each file name to its sha256, got {data!r}")
        return {}
    for name, digest in data.items():
        if (leaves := _path_problem(name)) is not None:
            problems.add(f"files[{name!r}]", f"{leaves} (a file inside the version folder)")
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            problems.add(f"files[{name!r}]", f"must be a 64-character lowercase hex sha256, got {digest!r}")
    return dict(data)


def _check_schema(data: Mapping[str, Any], source: str) -> None:
    if not (is_int(data["schema_version"]) and data["schema_version"] == SCHEMA_VERSION):
        raise ManifestError(
            f"{source} has schema_version {data['schema_version']!r}; this runtime reads only schema "
            f"{SCHEMA_VERSION}. Re-export the model, or use the runtime version that exported it."
        )


def _model_fields(data: Mapping[str, Any], problems: Problems) -> dict[str, Any]:
    """The sections of the model contract (runtime.contract), each at its location in the manifest."""
    task = choice(data["task"], TASKS, "task", problems)
    dims = parse_dimensions(data["dimensions"], "dimensions", problems)
    channels = parse_channels(data["channels"], "channels", problems)
    modality = choice(data["modality"], MODALITIES, "modality", problems)
    fields = {
        "name": parse_name(data["name"], "name", problems), "task": task,
        "modality": modality, "dimensions": dims,
        "slide": parse_slide(data.get("slide"), modality, dims, "slide", problems, complete=True),
        "axis_order": parse_axis_order(data["axis_order"], dims, "axis_order", problems), "channels": channels,
        "classes": parse_class_list(data["classes"], task, "classes", problems),
        "preprocessing": parse_step_list(data["preprocessing"], dims, len(channels), "preprocessing", problems,
                                         channels_from="the manifest's channels"),
        "window": parse_window_section(data["window"], dims, len(channels), "window", problems),
        "output": parse_output(data["output"], task, "output", problems),
    }
    check_logits_window(fields["output"], fields["window"], problems)
    return fields


def parse_manifest(data: Any, source: str = "manifest") -> Manifest:
    """Validate a manifest's decoded JSON and return it as frozen dataclasses."""
    problems = Problems("manifest")
    if not check_keys(data, "", _TOP_KEYS, _OPTIONAL_KEYS, problems=problems):
        _raise_if_any(problems, source)
    _check_schema(data, source)
    if not (is_int(data["version"]) and data["version"] >= 1):
        problems.add("version", f"must be an integer >= 1, got {data['version']!r}")
    fields = _model_fields(data, problems)
    onnx, files = _parse_onnx(data["onnx"], problems), _parse_files(data["files"], problems)
    if onnx is not None and onnx.file not in files:
        problems.add("files", f"must list the ONNX file {onnx.file!r} with its sha256")
    if not isinstance(data["provenance"], dict):
        problems.add("provenance", "must be an object")
    _raise_if_any(problems, source)
    return Manifest(schema_version=SCHEMA_VERSION, version=data["version"], onnx=onnx,  # type: ignore[arg-type]
                    files=files, provenance=dict(data["provenance"]), **fields)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The Triton model that serves a model's windows, batched across clients: <name>_windows, beside it,
# whose config.pbtxt names the model it serves in a parameter.
WINDOWS_MODEL_SUFFIX = "_windows"
SERVES_PARAMETER = "serves"
TRITON_CONFIG_FILE = "config.pbtxt"


def is_windows_companion(model_dir: Path) -> bool:
    """Whether a model folder is a `<name>_windows` companion (its config names the model it serves)."""
    config = Path(model_dir) / TRITON_CONFIG_FILE
    if not Path(model_dir).name.endswith(WINDOWS_MODEL_SUFFIX) or not config.is_file():
        return False
    try:
        with open(config, "rb") as handle:
            text = handle.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return False
    from runtime.pbtxt import config_parameters

    try:
        return SERVES_PARAMETER in config_parameters(text, str(config))
    except ManifestError:
        return False


def version_folders(model: Path) -> list[Path]:
    """The version folders (1/, 2/, ...) of a model folder, oldest first; none where it is no folder."""
    model = Path(model)
    if not model.is_dir():
        return []
    return sorted((p for p in model.iterdir() if p.is_dir() and is_number_name(p.name)), key=lambda p: int(p.name))


def resolve_version_dir(model: Path) -> Path:
    """Accept a model folder (newest integer version wins), a version folder or a manifest.json."""
    model = Path(model)
    if model.is_file() and model.name == MANIFEST_FILE:
        return model.parent
    if not model.is_dir():
        raise ManifestError(f"model folder {model} does not exist; pass model_repository/<name> or its version folder.")
    if (model / MANIFEST_FILE).is_file():
        return model
    versions = version_folders(model)
    if not versions:
        raise ManifestError(
            f"{model} holds no {MANIFEST_FILE} and no version folder (1/, 2/, …); "
            "package a model with `python -m export build` first."
        )
    newest = versions[-1]
    if newest.is_symlink():
        raise ManifestError(f"{newest} is a link, not a version folder: a version's files lie in its model folder, "
                            "checked against its record there; copy the version in, or remove the link.")
    if not (newest / MANIFEST_FILE).is_file():
        served = model.parent / model.name[: -len(WINDOWS_MODEL_SUFFIX)]
        if is_windows_companion(model) and served.is_dir():
            raise ManifestError(f"{model} is the Triton model that serves the windows of model {served.name}, beside "
                                f"it; run --model {served}.")
        raise ManifestError(f"{newest} has no {MANIFEST_FILE}; re-export this version or remove the folder.")
    return newest


def _check_inside(folder: Path, name: str) -> Path:
    """The path of a `files` entry, refused when it (or a link on the way) leads out of the version folder."""
    path, root = folder / name, folder.resolve()
    if not resolves_inside(folder, name):
        raise ManifestError(
            f"{path}: the {MANIFEST_FILE} files entry {name!r} is a link that leads outside the version folder "
            f"{root}; every file of a model version must lie inside it. Replace the link with the file or "
            "re-export the model."
        )
    return path


def verify_files(manifest: Manifest, folder: Path) -> None:
    """Refuse a model whose files leave the version folder, are missing, or whose sha256 differs from the
    manifest's. Every path is checked before any file is read."""
    paths = {name: _check_inside(folder, name) for name in manifest.files}
    for name, expected in manifest.files.items():
        path = paths[name]
        if not path.is_file():
            raise ManifestError(f"{path} is listed in {MANIFEST_FILE} but missing or not a regular file; restore it "
                                "or re-export the model.")
        data = path.read_bytes() if name.endswith(".onnx") or name == manifest.onnx.file else None
        if (hashlib.sha256(data).hexdigest() if data is not None else sha256_of(path)) != expected:
            raise ManifestError(
                f"{path} does not match the sha256 {MANIFEST_FILE} records for it ({expected}): the file was "
                "changed or damaged after export. Restore the original file or re-export the model."
            )
        if data is not None:
            _refuse_graph(path, data, manifest, name == manifest.onnx.file)


def _refuse_graph(path: Path, data: bytes, manifest: Manifest, is_model: bool) -> None:
    """Refuse an ONNX file whose weights lie in another file (no file the checksums cover) and, for
    the model's graph, one ending in its own Softmax or Sigmoid under an output section that
    activates again (`runtime.contract.activated_twice`), as `export build` refuses it: refused
    however the version was made."""
    from runtime.contract import activated_twice
    from runtime.onnx_tensors import Malformed, scan

    try:
        found = scan(data, manifest.onnx.output if is_model else "")
    except Malformed as exc:
        raise ManifestError(f"{path} is not an ONNX graph the runtime can read ({exc}); re-export the model.") from None
    if found.outside:
        raise ManifestError(f"{path} keeps the values of {len(found.outside)} tensor(s) "
                            f"({', '.join(found.outside[:3])}) in another file, which {MANIFEST_FILE}'s checksums do "
                            "not cover; export the model with its weights inside the graph.")
    twice = is_model and activated_twice(found.final_op, manifest.output.activation, manifest.output.probabilities,
                                         f"{path}: output {manifest.onnx.output!r}")
    if twice:
        raise ManifestError(f"{twice} in {path.parent / MANIFEST_FILE}.")


def _read_bounded(path: Path) -> bytes:
    """The bytes of manifest.json, refused unread when larger than limits.MAX_MANIFEST_BYTES or not
    a regular file (a pipe in its place is never waited on)."""
    try:
        return read_bytes(path, limits.MAX_MANIFEST_BYTES)
    except Unreadable as error:
        if error.kind == "large":
            raise ManifestError(f"{path} is larger than {limits.MAX_MANIFEST_BYTES:,} bytes, far more than a manifest "
                                "holds; it is damaged or not a manifest. Re-export the model.") from None
        raise ManifestError(f"{path} cannot be read ({error.reason}); re-export the model.") from None


def _too_deep(data: Any) -> bool:
    """Whether lists and objects nest deeper than limits.MAX_MANIFEST_DEPTH (the document itself is depth 1)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limits.MAX_MANIFEST_DEPTH:
                return True
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return False


def read_manifest_data(folder: Path) -> Any:
    """The decoded JSON of a version folder's manifest.json, before validation; ManifestError when it
    is too large, nested too deeply or not JSON."""
    path = folder / MANIFEST_FILE
    return decode_manifest(_read_bounded(path), str(path))


def decode_manifest(raw: bytes, source: str) -> Any:
    """The decoded JSON of a manifest's bytes (`source` names where they came from), before
    validation; ManifestError when they are too many, nested too deeply or not JSON."""
    if len(raw) > limits.MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source} is larger than {limits.MAX_MANIFEST_BYTES:,} bytes, far more than a manifest "
                            "holds; it is damaged or not a manifest. Re-export the model.")
    too_deep = ManifestError(f"{source} nests lists or objects more than {limits.MAX_MANIFEST_DEPTH} deep; it is "
                             "damaged or not a manifest. Re-export the model.")
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise too_deep from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{source} cannot be read as JSON ({exc}); re-export the model.") from None
    if _too_deep(data):
        raise too_deep
    return data


def manifest_digest(data: Any, source: str = "manifest") -> str:
    """The version digest of a manifest's decoded JSON: "sha256:" and the sha256 of its canonical JSON
    (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"{source} holds text that is not valid Unicode; re-export the model.") from None
    return DIGEST_PREFIX + hashlib.sha256(encoded).hexdigest()


def version_digest(model: Path | str) -> str:
    """The digest of a model version (a model folder's newest version, a version folder or its
    manifest.json): "sha256:<hex>" over the canonical JSON of its manifest, which records every file's sha256."""
    folder = resolve_version_dir(Path(model))
    return manifest_digest(read_manifest_data(folder), str(folder / MANIFEST_FILE))


def check_digest_text(expected: str | None) -> None:
    """Refuse an expected digest (`--expect-digest`) that is not written as a version digest."""
    if expected is not None and not DIGEST_PATTERN.match(expected):
        raise InputError(f"expected digest {expected!r} is not a version digest; give it as `runtime info` "
                         "prints it: sha256: and 64 lowercase hex digits.")


def check_digest(model: Path | str, expected: str | None) -> None:
    """Refuse a model version whose digest is not `expected` (nothing to check when None)."""
    if expected is None:
        return
    check_digest_text(expected)
    folder = resolve_version_dir(Path(model))
    actual = version_digest(folder)
    if actual != expected:
        raise ManifestError(
            f"model version {folder} has digest {actual}, but {expected} is expected: this is not the pinned "
            "version. Run the version the digest was taken from, or review this version and pin its digest."
        )


def load_manifest(model: Path | str, verify: bool = True) -> tuple[Manifest, Path]:
    """Load and validate a model's manifest; returns it with its version folder."""
    folder = resolve_version_dir(Path(model))
    manifest = parse_manifest(read_manifest_data(folder), str(folder / MANIFEST_FILE))
    # Triton's layout, or a version the model folder given was searched for: the folder names the version
    as_version = (folder.parent / TRITON_CONFIG_FILE).is_file() or Path(model).resolve() == folder.parent.resolve()
    if as_version and is_number_name(folder.name) and int(folder.name) != manifest.version:
        raise ManifestError(f"{folder / MANIFEST_FILE}: version is {manifest.version}, but it lies in the version "
                            f"folder {folder.name}/ of {folder.parent}, which Triton and the runtime serve as version "
                            f"{folder.name}; a version folder holds its own version's files: export the model again, "
                            "or put the folder back.")
    model_dir = folder.resolve().parent                 # `1` given from inside the model folder: its name
    served = model_dir.name
    if (model_dir / TRITON_CONFIG_FILE).is_file() and served not in (manifest.name,
                                                                     manifest.name + WINDOWS_MODEL_SUFFIX):
        raise ManifestError(f"{folder / MANIFEST_FILE}: name is {manifest.name!r}, but it lies in the model folder "
                            f"{served}/ of {model_dir.parent}, which Triton and the runtime serve as model "
                            f"{served}: a model folder holds its own model's versions. Export the model under the "
                            "name it is to be served by, or put the folder back.")
    if verify:
        verify_files(manifest, folder)
    return manifest, folder


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    """Write manifest.json atomically after checking it parses back to the same manifest."""
    data = manifest.to_dict()
    text = json.dumps(data, indent=2) + "\n"
    size = len(text.encode("utf-8"))
    if size > limits.MAX_MANIFEST_BYTES:
        raise ManifestError(f"the manifest of {manifest.name} v{manifest.version} would be {size:,} "
                            f"bytes, more than the {limits.MAX_MANIFEST_BYTES:,} a manifest may hold: its provenance "
                            "(a description, say) is far too long; shorten it.")
    parse_manifest(json.loads(text), f"{folder / MANIFEST_FILE} (about to be written)")
    path = folder / MANIFEST_FILE
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# Where `export build` records the run's data.relabel (label map value -> class value) and its
# data.ignore_value (the label map value of unannotated voxels) in provenance.
LABEL_RELABEL = "label_relabel"
LABEL_IGNORE = "label_ignore"
TABLE_COLUMNS = "table_columns"


def label_relabel(manifest: Manifest) -> dict[int, int] | None:
    """The label map values training scored as classes (the run's data.relabel: value -> class
    value, every other value the background), as `export build` recorded it; None where training
    took the label maps as they are. ManifestError where the record is not such a mapping."""
    recorded = manifest.provenance.get(LABEL_RELABEL)
    if recorded is None:
        return None
    limit = limits.MAX_CLASS_VALUE
    if isinstance(recorded, dict) and all(is_number_name(str(k)) and int(k) <= limit and is_int(v) and 0 <= v <= limit
                                          for k, v in recorded.items()):
        return {int(k): int(v) for k, v in recorded.items()}
    raise ManifestError(f"model {manifest.name}: provenance.{LABEL_RELABEL} is not a mapping of label values to class "
                        f"values (integers 0 to {limit}); re-export the model.")


def label_ignore(manifest: Manifest) -> int | None:
    """The label map value of voxels training left unannotated (the run's data.ignore_value), which
    no score counts, as `export build` recorded it; None where it recorded none. ManifestError where
    the record is not such a value or is a class's."""
    recorded = manifest.provenance.get(LABEL_IGNORE)
    if recorded is None:
        return None
    taken = {spec.value for spec in manifest.classes} | set(label_relabel(manifest) or {})
    if is_int(recorded) and 0 <= recorded <= limits.MAX_CLASS_VALUE and recorded not in taken:
        return int(recorded)
    raise ManifestError(f"model {manifest.name}: provenance.{LABEL_IGNORE} is {recorded!r}, not a label value (an "
                        f"integer 0 to {limits.MAX_CLASS_VALUE}) that no class has and {LABEL_RELABEL} does not "
                        "map; re-export the model.")


def checked_backends(manifest: Manifest) -> list[str] | None:
    """None for a version `export quantize` did not make; for an int8 one, the backends its labels
    were checked against the float version's on when it was made: its quantization record's
    `backends` (from a version made before those were recorded, its sample tolerances'), empty
    where it names none."""
    record = manifest.provenance.get("quantization")
    if record is None:
        return None
    backends = record.get("backends") if isinstance(record, dict) else None
    names = backends if isinstance(backends, (dict, list)) and backends else manifest.onnx.sample_tolerance
    return [str(name) for name in names]


def float_version(manifest: Manifest, version_dir: Path) -> Path | None:
    """The folder of the float version an int8 version was quantized from (its quantization
    record's `from_version`, beside it); None where the record names none."""
    record = manifest.provenance.get("quantization")
    made_from = record.get("from_version") if isinstance(record, dict) else None
    return None if made_from is None else Path(version_dir).parent / str(made_from)


# Where `export build` records the subjects the exported folds trained or validated on: their ids
# hashed with a salt of the version's own ({"salt": ..., "subjects": [...]}), so that a table scored
# with the model is warned of the subjects it learned from, and no id is written out.
TRAINED_ON = "trained_on"
HASH_CHARS = 16


def subject_hash(salt: str, subject_id: str) -> str:
    """A subject id as `provenance.trained_on` holds it: sha256 of the salt and the id, cut short."""
    return hashlib.sha256(f"{salt}\n{subject_id}".encode("utf-8", "surrogateescape")).hexdigest()[:HASH_CHARS]


def trained_subjects(manifest: Manifest, subject_ids: Sequence[str]) -> list[str]:
    """Those of `subject_ids` the model's folds trained or validated on (by id), as export recorded
    them; none where it recorded nothing. ManifestError where the record is malformed."""
    recorded = manifest.provenance.get(TRAINED_ON)
    if recorded is None or not subject_ids:
        return []
    salt, hashes = (recorded.get("salt"), recorded.get("subjects")) if isinstance(recorded, dict) else (None, None)
    if not (isinstance(salt, str) and salt and isinstance(hashes, list) and all(isinstance(h, str) for h in hashes)):
        raise ManifestError(f"model {manifest.name}: provenance.{TRAINED_ON} is not {{salt, subjects}} (a salt and "
                            "the hashes of the subject ids); re-export the model.")
    known = set(hashes)
    return [subject for subject in subject_ids if subject_hash(salt, subject) in known]


def table_columns_problem(recorded: Any) -> str | None:
    """What is wrong with a `provenance.table_columns` value, or None: it must map `subject` and/or
    `label` to column names (non-empty text), different ones."""
    if not (isinstance(recorded, dict) and set(recorded) <= {"subject", "label"}
            and all(isinstance(name, str) and name.strip() for name in recorded.values())):
        return "is not a mapping of subject and label to the training table's column names"
    if len(set(recorded.values())) < len(recorded):
        return "names one column for both the subject and the label"
    return None


def table_columns(manifest: Manifest) -> dict[str, str]:
    """The columns of the model's training table that held each subject's id and reference label
    (`subject`, `label`), as `export build` recorded them; empty where none are recorded.
    ManifestError where the record is not such a mapping."""
    recorded = manifest.provenance.get(TABLE_COLUMNS)
    if recorded is None:
        return {}
    problem = table_columns_problem(recorded)
    if problem is not None:
        raise ManifestError(f"model {manifest.name}: provenance.{TABLE_COLUMNS} {problem}; re-export the model.")
    return dict(recorded)


def check_provenance(manifest: Manifest) -> None:
    """Read every provenance record the runtime acts on (label_relabel, label_ignore,
    table_columns, trained_on), so that a malformed one is refused by `runtime verify` rather than
    by the first table scored with the model. ManifestError naming the first malformed record."""
    label_relabel(manifest)
    label_ignore(manifest)
    table_columns(manifest)
    trained_subjects(manifest, ["-"])
