"""What `export quantize` starts from, checked before any work: a float32 version of a radiology
segmentation model (a model folder gives its newest one), and subjects whose every scan the model
can read.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from runtime.commands.subjects import Subject, read_subjects, say_notes
from runtime.digests import check_config_digest, load_as_exported, unrecorded
from runtime.errors import InputError, MedflowError
from runtime.manifest import MANIFEST_FILE, Manifest, load_manifest

# Operators of a graph that computes in integers already (NNCF's quantize/dequantize pairs, and
# onnxruntime's own quantized operators).
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                           "QLinearMatMul", "ConvInteger", "MatMulInteger"})


def graph_precision(path: Path) -> str:
    """"int8" for a graph holding quantized operators, "float16" for one holding half-precision
    weights or casts to them, else "float32"; InputError where the file is no ONNX graph."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as error:  # onnx raises its own decode errors
        raise InputError(f"{path} cannot be read as an ONNX graph ({str(error).splitlines()[0]}); "
                         "export the version again.") from None
    if any(node.op_type in QUANTIZED_OPS for node in graph.node):
        return "int8"
    half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    casts = [a.i for node in graph.node if node.op_type == "Cast" for a in node.attribute if a.name == "to"]
    constants = [a.t.data_type for node in graph.node if node.op_type == "Constant" for a in node.attribute
                 if a.name == "value"]
    if half & {t.data_type for t in graph.initializer} or half & {*casts, *constants}:
        return "float16"
    return "float32"


def version_precision(manifest: Manifest, folder: Path) -> str:
    """A version's precision: "int8" where `export quantize` made it, else its graph's."""
    if "quantization" in manifest.provenance:
        return "int8"
    return graph_precision(folder / manifest.onnx.file)


def source_version(path: Path, say: Callable[[str], None]) -> tuple[Manifest, Path]:
    """The float32 version to quantize: the version folder given, or the newest float32 version of
    the model folder given (said); InputError for an int8 or float16 version, or a model of
    another kind."""
    if path.is_dir() and not (path / MANIFEST_FILE).is_file():
        manifest, folder = _newest_float(path, say)
    else:
        manifest, folder = load_as_exported(path)
        _refuse_precision(manifest, folder, version_precision(manifest, folder))
    said = unrecorded(path, folder, ("is quantized", "quantize"))
    if said:
        say(f"warning: {said}")
    check_config_digest(folder)                 # a manifest edited after export is not built on
    _refuse_kind(manifest)
    return manifest, folder


def _refuse_kind(manifest: Manifest) -> None:
    if manifest.window.mode != "sliding" or manifest.modality != "radiology" or manifest.task != "segmentation":
        raise InputError(f"model {manifest.name} is a {manifest.modality} {manifest.task} model on "
                         f"{manifest.window.mode} windows; quantize calibrates a radiology segmentation model's "
                         "sliding windows alone: run this model's float version as it is.")


def _refuse_precision(manifest: Manifest, folder: Path, precision: str) -> None:
    if precision == "int8":
        made_from = manifest.provenance.get("quantization", {}).get("from_version")
        remedy = (f"quantize its float version instead: python -m export quantize {folder.parent / str(made_from)}"
                  if made_from else "quantize the float32 graph it was made from")
        raise InputError(f"{folder} is an int8 version{f' (quantized from version {made_from})' if made_from else ''}"
                         f"; quantizing it again would compound the rounding: {remedy}.")
    if precision == "float16":
        raise InputError(f"{folder / manifest.onnx.file} is a float16 graph (half-precision weights); quantize "
                         "calibrates float32 graphs only: give the float32 version it was made from, or package "
                         "the float32 graph with export build.")


def _newest_float(model_dir: Path, say: Callable[[str], None]) -> tuple[Manifest, Path]:
    """The newest version of `model_dir` whose graph is float32, and a line saying which was taken
    and which newer ones were passed over."""
    versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: -int(p.name))
    passed: list[str] = []
    for folder in versions:
        try:
            manifest, _ = load_manifest(folder, verify=False)
            precision = version_precision(manifest, folder)
        except MedflowError:
            passed.append(f"{folder.name} (unreadable)")
            continue
        if precision == "float32":
            said = f"; passed over {', '.join(passed)}" if passed else ""
            say(f"quantizing version {folder.name} of {model_dir}, its newest float32 version{said}")
            return load_manifest(folder)
        passed.append(f"{folder.name} ({precision})")
    found = f" (versions: {', '.join(passed)})" if passed else ""
    raise InputError(f"{model_dir} holds no float32 version{found}; give a model folder or version folder with "
                     "a float32 graph (python -m export build).")


def checked_subjects(csv_path: Path, manifest: Manifest) -> list[Subject]:
    """The CSV's subjects, every row's scans (and label maps) opened first: each readable, as many
    channels and dimensions as the model takes; one InputError naming every row that is not."""
    if csv_path.is_dir():
        raise InputError(f"{csv_path} is a folder; --calibration takes a subjects CSV file (subject_id and "
                         f"the column(s) {', '.join(manifest.channels)}, as runtime predict --csv reads).")
    notes: list[str] = []
    subjects = read_subjects(csv_path, manifest, notes)
    problems = [problem for line, subject in enumerate(subjects, start=2)
                for problem in _scan_problems(subject, line, manifest)] + _repeated_scans(subjects)
    if problems:
        raise InputError(f"{csv_path} has {len(problems)} row problem(s), found before any calibration: "
                         f"{'; '.join(problems)}; fix or remove those rows.")
    say_notes([note for note in notes if "no label in column" not in note])
    return subjects


def _repeated_scans(subjects: list[Subject]) -> list[str]:
    """Rows naming a scan an earlier row names (the same file, however written): a held-out subject
    whose scan also calibrated would check nothing held out, and a repeated one weighs twice."""
    first: dict[Path, int] = {}
    problems = []
    for line, subject in enumerate(subjects, start=2):
        for path in subject.channels:
            resolved = Path(path).resolve()
            if resolved in first and first[resolved] != line:
                problems.append(f"line {line}: {path} is line {first[resolved]}'s scan too; each subject needs its own")
            first.setdefault(resolved, line)
    return problems


def _scan_problems(subject: Subject, line: int, manifest: Manifest) -> list[str]:
    from runtime.io.scan import check_image_file, is_seg_file, open_image

    problems, channels = [], 0
    for path in subject.channels:
        try:
            opened = open_image(path)
            if Path(path).is_file():
                check_image_file(Path(path))           # its stored data against its header: a truncated file
        except MedflowError as error:
            problems.append(f"line {line}: {str(error).rstrip('.')}")
            continue
        channels += opened.components
        if len(opened.size) != manifest.dimensions:
            problems.append(f"line {line}: {path} is a {len(opened.size)}D image; model {manifest.name} takes "
                            f"{manifest.dimensions}D scans")
    if not problems and channels != len(manifest.channels):
        problems.append(f"line {line}: {', '.join(map(str, subject.channels))} hold(s) {channels} channels; model "
                        f"{manifest.name} takes {len(manifest.channels)} ({', '.join(manifest.channels)})")
    if subject.label is not None and not is_seg_file(Path(subject.label)):
        try:
            open_image(subject.label)
        except MedflowError as error:
            problems.append(f"line {line}: label {str(error).rstrip('.')}")
    return problems


@contextmanager
def named_subject(subject: Subject) -> Iterator[None]:
    """A calibration or held-out subject's refused scan, named with the subject."""
    try:
        yield
    except InputError as error:
        raise InputError(f"subject {subject.subject_id}: {error}") from None
