"""Writing outputs atomically: each file is written into a hidden staging folder beside its target and
renamed into place only when every output of the job has been written, so a failure never leaves a
half-written file that looks finished, and never replaces a good file with a broken one.

The staging folder is `.medflow-partial-PID-HOST-NS-XXXX`, new for each job (a detached header's
data file is staged with it). An output never resolves to an input or to another output of the job
(`refuse_overwrites`), every image is read back after writing and must hold the input's grid
exactly (a format that cannot hold it is refused, not coerced), and staging folders (and a slide's
scratch folders, `.medflow-slide-PID-HOST-NS-XXXX`) that a killed run left behind are removed by the
next run that writes into the same folder (`remove_stale_partials`).
"""
from __future__ import annotations

import csv
import errno
import gzip
import itertools
import logging
import os
import re
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from runtime.errors import OutputError
from runtime.io.nifti import NIFTI_HEADER_SIZE, Placement
from runtime.io.scan import GEOMETRY_TOLERANCE, image_header
from runtime.parallel import for_each, physical_cores
from runtime.staging import creator_gone, host_name, pid_namespace
from runtime.stopping import stops_held

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# zlib level for .nii.gz outputs: level 1 writes label maps and probabilities several times faster
# than ITK's default level, for files a little larger.
GZIP_LEVEL = 1
_COPY_CHUNK = 1 << 22
# Files of at least twice _PARALLEL_GZIP_MIN and at most _PARALLEL_GZIP_MAX bytes are deflated
# in parts, one per core, held in memory; others are streamed.
_PARALLEL_GZIP_MIN = 1 << 22
_PARALLEL_GZIP_MAX = 1 << 28


def image_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def check_writable(path: Path, suffixes: Sequence[str], option: str = "output") -> None:
    """Fail before any work is done when an output (given with `option`) could not be written
    later; remove the staging folders of killed runs from its folder."""
    if _is_folder(path):
        raise OutputError(f"cannot write {path}: it is a folder; give a file name.")
    itk = set(suffixes) <= set(IMAGE_SUFFIXES)          # ITK names an image of another case otherwise
    name = path.name if itk else path.name.lower()
    if not any(name.endswith(s) for s in suffixes):
        allowed = suffixes[0] if len(suffixes) == 1 else f"one of {', '.join(suffixes)}"
        case = " (in lower case: ITK names the files of another case otherwise)" if any(
            path.name.lower().endswith(s) for s in suffixes) else ""
        raise OutputError(f"{option} {path} must end with {allowed}{case}.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist; create it first"
        raise OutputError(f"cannot write {path}: folder {parent} {what}.")
    reason = _refuses_files(parent)
    if reason is not None:
        raise OutputError(f"cannot write {path}: folder {parent} is not writable ({reason}).")
    remove_stale_partials(parent)


def prepare_output_dir(output_dir: Path) -> None:
    """Create an --output-dir and prove a file can be made in it, so that a folder the job cannot
    write into is refused before any work, whatever the reason (permissions, a read-only file
    system, a file in the way)."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {output_dir}: {exc.strerror}; "
                          "choose another --output-dir.") from None
    reason = _refuses_files(output_dir)
    if reason is not None:
        raise OutputError(f"cannot write into the output folder {output_dir}: {reason}; "
                          "choose another --output-dir or make it writable.")
    remove_stale_partials(output_dir)


def _refuses_files(folder: Path) -> str | None:
    """Why a file cannot be made in `folder`, found by making (and removing) one; None when it can.
    Permission bits alone do not tell: a read-only or full file system, a folder of a special file
    system, and any folder for root, whom the bits never stop."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".medflow-probe-"):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


STAGING_PREFIX = ".medflow-partial-"
KEPT_PREFIX = ".medflow-kept-"        # a staging folder kept for the earlier files a failed publish could not put back
# .medflow-partial-PID-HOST-NS-XXXX (NS: the PID namespace); earlier releases' lack -NS-XXXX.
_STAGING = re.compile(r"^\.medflow-partial-(?P<pid>\d+)-(?P<host>[A-Za-z0-9._]+)(?:-(?P<ns>\d+)-[A-Za-z0-9_]+)?$")
SCRATCH_PREFIX = ".medflow-slide-"
_SCRATCH = re.compile(r"^\.medflow-slide-(?P<pid>\d+)-(?P<host>[A-Za-z0-9._]+)-(?P<ns>\d+)-[A-Za-z0-9_]+$")
# Temporary files of earlier releases: .NAME.PID.partial.SUFFIX, NAME ending in SUFFIX.
_LEGACY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.partial(?P<suffix>\.nii\.gz|\.nii|\.nrrd|\.mha|\.csv)$")


def staging_folder(folder: Path) -> Path:
    """A new hidden folder in `folder` in which a job stages its outputs for it,
    `.medflow-partial-PID-HOST-NS-XXXX`: made afresh (never one already there, nor a link's
    target), and named with the PID namespace, so that a job in another container of the same host
    name and PID never shares it, nor takes it for a killed run's while it lives."""
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{host_name()}-{pid_namespace()}-",
                                 dir=folder))


def scratch_folder(folder: Path | None) -> Path:
    """A new hidden scratch folder of this process in `folder` (the system's temporary folder where None),
    `.medflow-slide-PID-HOST-NS-XXXX` (NS: the process's PID namespace), which the caller removes;
    one that a killed run left behind is removed by the next run in the same PID namespace that
    writes into the same folder (`remove_stale_partials`): a container that shares the host's name
    but not its processes never takes another's live map for stale."""
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-{host_name()}-{pid_namespace()}-",
                                 dir=folder))


def companions(path: Path) -> list[Path]:
    """The data file ITK writes beside a detached header (.mhd, .nhdr), compressed as outputs are."""
    suffix = image_suffix(path)
    if suffix == ".mhd":
        return [path.with_name(path.name[:-len(suffix)] + ".zraw")]
    if suffix == ".nhdr":
        return [path.with_name(path.name[:-len(suffix)] + ".raw.gz")]
    return []


def _stale(path: Path) -> bool:
    staging = _STAGING.match(path.name) or _SCRATCH.match(path.name)
    if staging and staging["ns"] is not None and int(staging["ns"]) != pid_namespace():
        return False
    if staging and path.is_dir() and not path.is_symlink():
        return creator_gone(int(staging["pid"]), staging["host"], path)
    legacy = _LEGACY.match(path.name)
    if legacy and legacy["name"].endswith(legacy["suffix"]) and path.is_file() and not path.is_symlink():
        return creator_gone(int(legacy["pid"]), None, path)
    return False


def stale_partials(folder: Path) -> list[Path]:
    """The staging and scratch folders (and temporary files of earlier releases) in `folder` whose
    writing process is gone (see runtime.staging)."""
    try:
        return sorted(path for path in folder.iterdir() if _stale(path))
    except OSError:
        return []


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove what killed runs left in `folder`, saying so once per item."""
    removed = []
    for path in stale_partials(folder):
        if path.is_dir() and any(path.glob(".replaced-*")):
            _keep_replaced(path)
            continue
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        except OSError as exc:
            log.warning("could not remove %s, left by an interrupted run: %s", path, exc.strerror or exc)
            continue
        log.warning("removed %s, left by an interrupted run", path)
        removed.append(path)
    return removed


def _keep_replaced(path: Path) -> None:
    """A killed run's staging folder that holds earlier outputs its publish had replaced
    (`.replaced-N`: where the kill came between two renames, the only copy of an earlier file): kept,
    renamed `.medflow-kept-…` so that no run removes it, and warned of."""
    keep = _kept_folder(path) if path.name.startswith(STAGING_PREFIX) else path
    log.warning("kept %s, left by an interrupted run: it holds earlier outputs that run replaced (.replaced-N); "
                "move back what you need and remove the folder", keep)


def _kept_folder(folder: Path) -> Path:
    """The staging folder `folder` renamed `.medflow-kept-…`, which no run removes; `folder` itself
    where it cannot be renamed."""
    keep = folder.with_name(KEPT_PREFIX + folder.name[len(STAGING_PREFIX):])
    try:
        folder.rename(keep)
    except OSError:
        return folder
    return keep


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """A path's resolved location, and its (device, inode) when it exists."""
    try:
        stat = path.stat()
        node = (stat.st_dev, stat.st_ino)
    except OSError:
        node = None
    return os.path.realpath(path), node


def _same_file(a: tuple[str, tuple[int, int] | None], b: tuple[str, tuple[int, int] | None]) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def _input_files(inputs: Iterable[Path]) -> list[Path]:
    """The input files; a folder (a DICOM series) stands for the files in it, and a detached header
    (.nhdr, .mhd) for its data file too."""
    files = []
    for path in map(Path, inputs):
        if path.is_dir():
            files += [p for p in path.iterdir() if p.is_file()]
        files += [path, *_data_files(path)]
    return files


def _data_files(path: Path) -> list[Path]:
    """The data file a header names beside it (a detached NRRD or MetaImage header's), where it
    names one; none for a header that cannot be read (its reading refuses it)."""
    from runtime.errors import MedflowError

    if not (path.name.lower().endswith((".nhdr", ".nrrd", ".mhd")) and path.is_file()):
        return []                   # the formats whose header may name a file of its data
    try:
        header = image_header(path)
    except (MedflowError, OSError):
        return []
    return [Path(header.stream.file)] if header is not None and Path(header.stream.file) != path else []


def _is_folder(path: Path) -> bool:
    """Whether `path` is a folder; OutputError where it cannot be looked at (a name too long)."""
    try:
        return path.is_dir()
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}; choose another path.") from None


def refuse_overwrites(outputs: Sequence[tuple[str, Path]], inputs: Iterable[Path]) -> None:
    """Refuse an output that resolves to an input — through a symbolic link or a hard link too —,
    that lies in an input folder (a DICOM series), or that is another output of the same job.
    `outputs` are (option, path) pairs, for the message."""
    seen: list[tuple[str, Path, tuple[str, tuple[int, int] | None]]] = []
    written = [(option, output, path) for option, output in outputs for path in (output, *companions(output))]
    for option, output, path in written:
        if _is_folder(path):
            what = "" if path == output else f" writes its data file {path}, which"
            raise OutputError(f"{option} {output}{what} is a folder; an output is a file: remove the folder or choose "
                              "another path.")
    for option, _, path in written:
        identity = _identity(path)
        for other_option, other, other_identity in seen:
            if _same_file(identity, other_identity):
                raise OutputError(f"{option} {path} and {other_option} {other} are the same file; give each output "
                                  "its own path.")
        seen.append((option, path, identity))
    inputs = list(inputs)
    for folder in (Path(source) for source in inputs if Path(source).is_dir()):
        for option, path, _ in seen:
            if Path(path).resolve().is_relative_to(folder.resolve()):
                raise OutputError(f"{option} {path} lies in the input folder {folder}, which would then hold a file "
                                  "that is not part of its series; choose a path outside it.")
    for source in _input_files(inputs):
        source_identity = _identity(source)
        for option, path, identity in seen:
            if _same_file(identity, source_identity):
                raise OutputError(f"{option} {path} is the input {source}; an input is never overwritten: choose "
                                  "another output path.")


def _full(path: Path) -> int | None:
    """ENOSPC where the disk `path` is written to has no space left (ITK names no cause of its own)."""
    try:
        stats = os.statvfs(path.parent if str(path.parent) else ".")
    except OSError:
        return None
    return errno.ENOSPC if stats.f_bavail * stats.f_frsize < 1 << 20 else None


def cannot_write(path: Path, reason: str, number: int | None = None) -> OutputError:
    """A failed write, with what to do: free space where the disk is full, else another path."""
    remedy = "free space on its disk, or write elsewhere" if number == errno.ENOSPC else \
        "check the folder, or write elsewhere"
    return OutputError(f"cannot write {path}: {reason}; {remedy}.")


class OutputSet:
    """Stage every output of one job in a hidden folder beside it, then publish all of them together."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._folders: list[Path] = []

    def __enter__(self) -> "OutputSet":
        return self

    def targets(self) -> list[Path]:
        """The paths staged so far, as they will be published."""
        return [path for _, path in self._staged]

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def _stage(self, path: Path) -> Path:
        parent = path.parent if str(path.parent) else Path(".")
        folder = next((made for made in self._folders if made.parent == parent), None)
        if folder is None:
            try:
                folder = staging_folder(parent)
            except OSError as exc:
                raise cannot_write(path, exc.strerror or str(exc), exc.errno) from None
            self._folders.append(folder)
        tmp = folder / path.name
        self._staged.append((tmp, path))
        return tmp

    def image(self, array_zyx: np.ndarray, reference: sitk.Image, path: Path,
              placement: Placement | None = None) -> None:
        """Stage an image on the reference grid; a leading channel axis makes a 4D image (of a 2D
        grid: x, y, one slice and the channel). `placement`, a 2D NIfTI input's place in 3D, goes
        into a NIfTI output's header."""
        tmp = self._stage(path)
        try:
            _write_array(array_zyx, reference, tmp, placement)
            _check_written_grid(tmp, reference, path)
        except RuntimeError as exc:
            raise cannot_write(path, str(exc).strip().splitlines()[-1], _full(path)) from None
        except OSError as exc:
            raise cannot_write(path, exc.strerror or str(exc), exc.errno) from None

    def file(self, path: Path, write: Callable[[Path], None]) -> None:
        """Stage whatever `write(staged_path)` writes for `path` (a slide's TIFF, an overlay)."""
        tmp = self._stage(path)
        try:
            write(tmp)
        except OSError as exc:
            raise cannot_write(path, exc.strerror or str(exc), exc.errno) from None

    def table(self, rows: Iterable[dict[str, object]], header: Sequence[str], path: Path) -> None:
        tmp = self._stage(path)
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(header), lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None

    def commit(self) -> None:
        """Rename every staged file into place, a detached header's data file before the header: all
        of them or none. A folder in the place of any refuses the set before the first rename. Each
        file a rename replaces keeps a second name in the staging folder until the last rename (so
        it is never missing, even if the process is killed there), and a failed rename puts those
        back (and takes away what the set had published)."""
        moves = [(source, path.parent / source.name if source != tmp else path)
                 for tmp, path in self._staged for source in (*companions(tmp), tmp)]
        try:
            with stops_held():    # a stop signal (Ctrl-C too) waits until the whole set is published
                blocked = [target for _, target in moves if target.is_dir() and not target.is_symlink()]
                if blocked:
                    raise OutputError(f"cannot publish {blocked[0]}: a folder is in its place; nothing was published: "
                                      "remove the folder or choose another path.")
                self._publish(moves)
        finally:
            self.discard()

    def _publish(self, moves: Sequence[tuple[Path, Path]]) -> None:
        replaced: list[tuple[Path, Path | None]] = []     # (target, the earlier file's second name) per rename done
        try:
            for number, (source, target) in enumerate(moves):
                aside = None
                if target.exists() or target.is_symlink():
                    aside = source.parent / f".replaced-{number}"
                    _second_name(target, aside)
                os.replace(source, target)                    # atomic: done, or the target is as it was
                replaced.append((target, aside))
        except OSError as exc:
            failed, lost = target, []
            for done, aside in reversed(replaced):
                try:
                    if aside is not None:
                        os.replace(aside, done)
                    else:
                        done.unlink(missing_ok=True)
                except OSError:
                    lost.append((done, aside))
            raise OutputError(f"cannot publish {failed}: {exc.strerror or exc}; "
                              + (self._kept(lost) if lost else "nothing was published")) from None

    def _kept(self, lost: Sequence[tuple[Path, Path | None]]) -> str:
        """Keep the staging folders, renamed so that no later run removes them as a killed run's,
        for the earlier files that could not be put back; what the message says of them."""
        kept = [_kept_folder(folder) for folder in self._folders]
        unmarked = any(keep in self._folders for keep in kept)
        self._folders = []          # nothing of them is removed
        back = ", ".join(f"{done} (as {aside.name})" for done, aside in lost if aside is not None)
        left = ", ".join(str(done) for done, aside in lost if aside is None)
        now = " now: a later run may remove the folder as a killed run's" if unmarked else ""
        return "; ".join(filter(None, [
            back and f"the earlier {back} could not be put back: they are in {', '.join(map(str, kept))}; move them "
                     f"back by hand{now}",
            left and f"the new {left} could not be removed"]))

    def discard(self) -> None:
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)
        self._staged.clear()
        self._folders.clear()


def _second_name(target: Path, aside: Path) -> None:
    """Give the file at `target` the second name `aside` (a hard link; a copy where the file system
    makes none; for a symbolic link, a link to the same place), so that `target` can be replaced
    by one rename and still be put back. Where neither can be made (another user's file, which
    protected hard links and its mode keep from us), it is renamed to `aside`: replaceable as
    before, though missing until the rename that follows."""
    try:
        if target.is_symlink():
            os.symlink(os.readlink(target), aside)
            return
        try:
            os.link(target, aside)
        except OSError:
            shutil.copy2(target, aside)
    except OSError:
        os.replace(target, aside)


def _check_written_grid(written: Path, reference: sitk.Image, path: Path) -> None:
    """Read back the header just written: its spatial grid must be the reference's, within the
    tolerance inputs are held to (runtime.io.scan.GEOMETRY_TOLERANCE)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(written))
    reader.ReadImageInformation()
    dims = reference.GetDimension()
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(reader.GetDimension(), -1)[:dims, :dims]
    stored = (tuple(reader.GetSize()[:dims]), reader.GetSpacing()[:dims], reader.GetOrigin()[:dims],
              tuple(direction.ravel()))
    expected = (tuple(reference.GetSize()), reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection())
    if stored[0] != expected[0] or not all(np.allclose(a, b, rtol=GEOMETRY_TOLERANCE, atol=GEOMETRY_TOLERANCE)
                                           for a, b in zip(stored[1:], expected[1:])):
        raise OutputError(f"cannot write {path} on the input's grid: the file stores size {stored[0]}, spacing "
                          f"{_rounded(stored[1])}, origin {_rounded(stored[2])}, direction {_rounded(stored[3])} for "
                          f"{expected[0]}, {_rounded(expected[1])}, {_rounded(expected[2])}, {_rounded(expected[3])}; "
                          "write .mha, which holds any grid.")


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), 6) for v in values]


_PLAIN_NAMES = itertools.count()


def _write_array(array_zyx: np.ndarray, reference: sitk.Image, path: Path, placement: Placement | None = None) -> None:
    """Write (*S) or (K, *S) on the reference's grid to `path`; the channels of a 2D grid as a
    volume of one slice and K channels (x, y, 1, K), as a viewer shows channels. NIfTI is written
    plain beside it under a name of its own, `placement` stamped into its header, then moved there,
    or gzipped there at a fast level (ITK's own level is slow) for .nii.gz: ITK strips a second
    image suffix from the name it is given (`ct.nii.nii` is written as `ct.nii`, `ct.nii.gz.nii`
    gzipped as `ct.nii.gz`), and a subject id may end in one. Channels go to NIfTI straight from
    the array (`_write_nifti_channels`)."""
    if reference.GetDimension() == 2 and array_zyx.ndim == 3:
        array_zyx, reference = array_zyx[:, np.newaxis], _one_slice(reference, placement)
    suffix = image_suffix(path)
    if suffix not in (".nii", ".nii.gz"):
        sitk.WriteImage(to_image(array_zyx, reference), str(path), useCompression=True)
        return
    plain = path.with_name(f".{os.getpid()}-{next(_PLAIN_NAMES)}.nii")
    try:
        if not _write_nifti_channels(array_zyx, reference, plain):
            sitk.WriteImage(to_image(array_zyx, reference), str(plain), useCompression=False)
        if placement is not None:
            _stamp(plain, placement)
        if suffix == ".nii.gz":
            _gzip_file(plain, path)
        else:
            os.replace(plain, path)
    finally:
        plain.unlink(missing_ok=True)


_NIFTI_DIMS = 40          # dim[0..7], int16, in a NIfTI-1 header
_NIFTI_DATA = 352         # the voxels' offset in a single-file NIfTI-1


def _write_nifti_channels(array_zyx: np.ndarray, reference: sitk.Image, path: Path) -> bool:
    """Channels (K, *S) as one NIfTI-1 image of K volumes, byte for byte the file ITK writes of
    `to_image`'s joined channels, without ITK's copy of each channel and of their join (two more
    copies of a whole probability map): ITK writes the header of a 1 x ... x 1 x K image on the
    same grid, its dimensions are set to the array's, and the voxels follow as they lie in memory
    (x fastest, the channel slowest: NIfTI's order). False, having written nothing, for a single
    volume, or one whose header ITK would not write so (NIfTI-1 holds at most 32767 voxels an axis)."""
    spatial = reference.GetDimension()
    if array_zyx.ndim != spatial + 1 or max(array_zyx.shape) > 32767 or array_zyx.dtype.byteorder == ">":
        return False
    array = np.ascontiguousarray(array_zyx)
    shape = (array.shape[0], *(1,) * spatial)
    template = to_image(np.zeros(shape, dtype=array.dtype), _one_voxel(reference))
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".header-") as folder:
        sitk.WriteImage(template, str(Path(folder) / "header.nii"), useCompression=False)
        header = bytearray((Path(folder) / "header.nii").read_bytes()[:_NIFTI_DATA])
    dims = struct.unpack_from("<8h", header, _NIFTI_DIMS)
    if len(header) != _NIFTI_DATA or dims[0] != spatial + 1 or dims[spatial + 1] != array.shape[0]:
        return False
    struct.pack_into(f"<{spatial}h", header, _NIFTI_DIMS + 2, *reversed(array.shape[1:]))
    with open(path, "wb") as handle:
        handle.write(header)
        for channel in array:
            handle.write(memoryview(channel).cast("B"))
    return True


def _one_slice(reference: sitk.Image, placement: Placement | None = None) -> sitk.Image:
    """A 2D grid as a volume of one slice: where `placement` puts it in 3D (its z, its thickness
    and its normal), else at z 0, one millimetre thick."""
    affine = None if placement is None or not placement.in_3d() else placement.affine()
    z, thickness, normal = 0.0, 1.0, (0.0, 0.0, 1.0)
    if affine is not None:
        column = affine[:3, 2] * (-1, -1, 1)              # NIfTI's RAS as ITK's LPS
        thickness = float(np.linalg.norm(column))
        z, normal = float(affine[2, 3]), tuple(float(v) for v in column / thickness)
    volume = sitk.Image([*reference.GetSize(), 1], sitk.sitkUInt8)
    volume.SetSpacing((*reference.GetSpacing(), thickness))
    volume.SetOrigin((*reference.GetOrigin(), z))
    d = reference.GetDirection()
    volume.SetDirection((d[0], d[1], normal[0], d[2], d[3], normal[1], 0.0, 0.0, normal[2]))
    return volume


def _stamp(path: Path, placement: Placement) -> None:
    """Write `placement` into the header of the plain NIfTI-1 file at `path`."""
    with open(path, "r+b") as handle:
        header = bytearray(handle.read(NIFTI_HEADER_SIZE))
        placement.stamp(header)
        handle.seek(0)
        handle.write(header)


def _one_voxel(reference: sitk.Image) -> sitk.Image:
    """An image of one voxel with the reference's spacing, origin and direction."""
    image = sitk.Image([1] * reference.GetDimension(), sitk.sitkUInt8)
    image.SetSpacing(reference.GetSpacing())
    image.SetOrigin(reference.GetOrigin())
    image.SetDirection(reference.GetDirection())
    return image


def _gzip_file(source: Path, target: Path) -> None:
    """Gzip `source` into `target` as one gzip member.

    A file of a few MB up to _PARALLEL_GZIP_MAX is cut into one part per core and the parts are
    deflated side by side, each ending on a byte boundary (a full flush), so that their raw deflate
    streams joined make one valid stream (as pigz does); the CRC and length cover the whole file.
    Larger files are streamed through one compressor, a chunk at a time.
    """
    size = source.stat().st_size
    parts = min(physical_cores(), size // _PARALLEL_GZIP_MIN)
    if parts < 2 or size > _PARALLEL_GZIP_MAX:
        with open(source, "rb") as plain, open(target, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as packed:
                shutil.copyfileobj(plain, packed, _COPY_CHUNK)
        return
    data = memoryview(source.read_bytes())
    step = -(-len(data) // parts)
    pieces = [data[start:start + step] for start in range(0, len(data), step)]
    deflated: list[bytes] = [b""] * len(pieces)

    def deflate(index: int) -> None:
        packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        last = index == len(pieces) - 1
        deflated[index] = packer.compress(pieces[index]) + packer.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)

    for_each(deflate, range(len(pieces)))
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no name, mtime 0, unknown OS
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    with open(target, "wb") as handle:
        handle.write(header)
        for block in deflated:
            handle.write(block)
        handle.write(trailer)


def to_image(array_zyx: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A (z, y, x) array, or (K, z, y, x) joined into a 4D image, on the reference's geometry."""
    spatial = reference.GetDimension()
    if array_zyx.ndim == spatial:
        image = sitk.GetImageFromArray(array_zyx)
        image.CopyInformation(reference)
        return image
    volumes = []
    for channel in array_zyx:
        image = sitk.GetImageFromArray(channel)
        image.CopyInformation(reference)
        volumes.append(image)
    return sitk.JoinSeries(volumes)
