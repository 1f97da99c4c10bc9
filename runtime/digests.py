"""The version digests a model's Triton config records, and the checks that compare a version with them.

`python -m export build` records the digest (`runtime.manifest.version_digest`) of every version it
builds in the model's `config.pbtxt`, as one string parameter that lists `<version>=<digest>`
entries separated by commas:

    parameters: {
      key: "version_digests"
      value: { string_value: "1=sha256:<64 hex digits>,2=sha256:<64 hex digits>" }
    }

`runtime verify` fails when a version's digest differs from the one recorded for it, and the Triton
adapter refuses to load such a version: an edited manifest (a changed spacing, a changed checksum
of a swapped file) no longer passes for the exported one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from runtime.errors import ManifestError
from runtime.pbtxt import config_parameters
from runtime.manifest import (
    DIGEST_PATTERN, Manifest, check_digest, load_manifest, resolve_version_dir, version_digest,
)
from runtime.validation import is_number_name

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
DIGESTS_PARAMETER = "version_digests"
MAX_CONFIG_BYTES = 1 << 20


def format_digests(digests: Mapping[int, str]) -> str:
    """The parameter's value: `<version>=<digest>` entries in version order, joined by commas."""
    return ",".join(f"{version}={digests[version]}" for version in sorted(digests))


def parse_digests(text: str, source: str) -> dict[int, str]:
    """The entries of a `version_digests` value; ManifestError names the first malformed one."""
    digests = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        version, _, digest = entry.partition("=")
        if not (is_number_name(version) and DIGEST_PATTERN.match(digest)):
            raise ManifestError(f"{source}: parameter {DIGESTS_PARAMETER} holds {entry!r}, which is not "
                                "<version>=sha256:<64 hex digits>; restore the config that export wrote.")
        digests[int(version)] = digest
    return digests


def config_digests(model_dir: Path) -> dict[int, str] | None:
    """The digests `<model_dir>/config.pbtxt` records ({} when it records none); None without a config.pbtxt."""
    path = Path(model_dir) / CONFIG_FILE
    text = read_config(path)
    if text is None:
        return None
    value = config_parameters(text, str(path)).get(DIGESTS_PARAMETER)
    return parse_digests(value, str(path)) if value is not None else {}


def read_config(path: Path) -> str | None:
    """The text of the config.pbtxt at `path` (UTF-8, at most MAX_CONFIG_BYTES); None where there is none."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_CONFIG_BYTES + 1).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} cannot be read ({exc}); restore the config that export wrote.") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ManifestError(f"{path} is larger than {MAX_CONFIG_BYTES:,} bytes; restore the config that export wrote.")
    return text


@dataclass(frozen=True)
class DigestCheck:
    """A version's digest and what its model's config.pbtxt says of it."""

    digest: str
    config: Path
    recorded: str | None       # the digest the config records for the version; None when it records none
    has_config: bool

    def describe(self) -> str:
        if not self.has_config:
            return f"{self.digest} (no {self.config.name} beside the version records it)"
        if self.recorded is None:
            return f"{self.digest} ({self.config} records no digest for this version)"
        return f"{self.digest}, as {self.config} records"


class DigestMismatch(ManifestError):
    """A version whose digest is not the one its Triton config records."""


def _mismatch(version_dir: Path, digest: str, recorded: str, source: str) -> DigestMismatch:
    return DigestMismatch(
        f"model version {version_dir} has digest {digest}, but {source} records {recorded} for it: its "
        "manifest.json or that record was changed after export. Restore the exported version, or build a new version."
    )


def load_as_exported(model: Path | str, verify: bool = True) -> tuple[Manifest, Path]:
    """`load_manifest`, where a manifest.json refused as invalid whose digest is not the one its
    config.pbtxt records is refused as changed after export, as a valid one is (`_mismatch`): a
    field removed by hand was said to be a manifest of an older export."""
    try:
        return load_manifest(model, verify)
    except ManifestError as error:
        folder = resolve_version_dir(Path(model))
        recorded = config_digests(folder.parent) if is_number_name(folder.name) else None
        expected = recorded.get(int(folder.name)) if recorded else None
        try:
            digest = version_digest(folder)
        except ManifestError:
            raise error from None
        if expected is None or digest == expected:
            raise
        raise _mismatch(folder, digest, expected, str(folder.parent / CONFIG_FILE)) from None


def check_config_digest(version_dir: Path) -> DigestCheck:
    """Compare a version's digest with the one the config.pbtxt beside it records; ManifestError when they differ."""
    version_dir = Path(version_dir)
    digest = version_digest(version_dir)
    config = version_dir.parent / CONFIG_FILE
    recorded = config_digests(version_dir.parent)
    expected = None if recorded is None or not is_number_name(version_dir.name) else recorded.get(int(version_dir.name))
    if expected is not None and expected != digest:
        raise _mismatch(version_dir, digest, expected, str(config))
    return DigestCheck(digest=digest, config=config, recorded=expected, has_config=recorded is not None)


def unrecorded(model_path: Path, version_dir: Path, use: tuple[str, str] = ("runs", "run")) -> str | None:
    """Where a command was given a model folder and took `version_dir` from it: a warning when the
    folder's config.pbtxt records other versions' digests but not this one's (an export stopped
    before it recorded it, a config older than its records of digests, or a folder copied or added
    by hand), so that it is used unpinned knowingly; `use` says how, as "it runs" and "to run it"
    say it. None where the version was named directly (its folder or its manifest.json), or is
    recorded."""
    model_path, version_dir = Path(model_path), Path(version_dir)
    given = model_path.parent if model_path.is_file() else model_path
    if given.resolve() == version_dir.resolve() or not is_number_name(version_dir.name):
        return None
    recorded = config_digests(version_dir.parent)
    if not recorded or int(version_dir.name) in recorded:
        return None
    listed = ", ".join(str(v) for v in sorted(recorded))
    return (f"version {version_dir.name} of {version_dir.parent}, taken for it, is not recorded in its "
            f"{CONFIG_FILE} (which records version(s) {listed}): it {use[0]} unpinned. An export records each version "
            "it builds; a folder copied or added by hand, or an export stopped before it recorded it, is not. Name the "
            f"version ({version_dir}) to {use[1]} it knowingly, or export it again.")


def check_pins(version_dir: Path, expected: str | None) -> None:
    """Before a version runs: its digest must be `expected` when one is given (`runtime predict
    --expect-digest`), and the one its config.pbtxt records when it records one."""
    check_digest(version_dir, expected)
    check_config_digest(version_dir)


def served_digests(model_config: Mapping[str, Any], source: str) -> dict[int, str]:
    """The digests recorded in a Triton model config as Triton hands it to a Python model (decoded JSON)."""
    parameters = model_config.get("parameters") or {}
    value = (parameters.get(DIGESTS_PARAMETER) or {}).get("string_value", "")
    return parse_digests(value, source) if isinstance(value, str) else {}


def check_served_version(model_config: Mapping[str, Any], version_dir: Path) -> None:
    """Refuse to serve a version whose digest differs from the one its Triton config records; a version
    the config records nothing for is served, with a warning."""
    version_dir = Path(version_dir)
    source = f"the Triton config of {version_dir.parent}"
    expected = served_digests(model_config, source).get(int(version_dir.name))
    digest = version_digest(version_dir)
    if expected is None:
        log.warning("%s records no digest for version %s (%s); serving it unpinned", source, version_dir.name, digest)
    elif expected != digest:
        raise _mismatch(version_dir, digest, expected, source)
