"""A new config.pbtxt that keeps what was set by hand in the one it replaces.

Triton's operators tune a model's config.pbtxt (where its instances run and how many, a memory
budget, the versions served, batching delays); a build of a new version writes the config again and
must not undo that. What the model is (`name`, `backend`, `platform`, `max_batch_size`, `input`,
`output`) is written from the new version's manifest; every other field the old config sets is kept
as written there, in place of the new config's default; a parameter the old config sets is kept too,
except those the build owns (the version digests, the model a companion serves). Fields are found at
the top level of the text format as Triton's parser reads it: comments, strings in either quote,
`name [` without a colon, `{...}`, `<...>` and `[...]` values; the comments before a kept field, and
one on its value's last line, go with it. A name that is no field of Triton's model config is
refused (Triton refuses such a config too), so that a misspelt edit is said, not carried into every
new config.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Collection

from runtime.digests import CONFIG_FILE, config_digests, read_config
from runtime.errors import ManifestError
from runtime.manifest import WINDOWS_MODEL_SUFFIX
from runtime.pbtxt import config_parameters

# The fields that say what the model is: always the new version's.
IDENTITY = frozenset({"name", "backend", "platform", "max_batch_size", "input", "output"})
SCALARS = frozenset({"name", "backend", "platform", "max_batch_size"})
# The fields of Triton's ModelConfig (2.51): a config naming another is refused by Triton, and here.
MODEL_CONFIG_FIELDS = frozenset({
    "backend", "batch_input", "batch_output", "cc_model_filenames", "default_model_filename", "dynamic_batching",
    "ensemble_scheduling", "input", "instance_group", "max_batch_size", "metric_tags", "model_metrics",
    "model_operations", "model_repository_agents", "model_transaction_policy", "model_warmup", "name",
    "optimization", "output", "parameters", "platform", "response_cache", "runtime", "sequence_batching",
    "version_policy"})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = re.compile(r"(?:\s+|#[^\n]*)*")
_BLANK = re.compile(r"\s*")
_TRAILING_COMMENT = re.compile(r"[ \t]*[,;]?[ \t]*#[^\n]*")
_SCALAR = re.compile(r"[^\s,;{}\[\]#]+")


def check_configs(model_dir: Path) -> None:
    """ManifestError where the config.pbtxt of the model in `model_dir`, or of its `_windows`
    companion, cannot be read to keep its edits and digests: checked before a version is built, so
    that a build never ends with a version its config does not record."""
    config_digests(model_dir)
    for folder in (model_dir, model_dir.parent / f"{model_dir.name}{WINDOWS_MODEL_SUFFIX}"):
        text = read_config(folder / CONFIG_FILE)
        if text is not None:
            config_parameters(text, str(folder / CONFIG_FILE))
            top_level_fields(text, str(folder / CONFIG_FILE))


def top_level_fields(text: str, source: str) -> list[tuple[str, str]]:
    """Each top-level field of a text-format message, (name, its text from the comments before it
    to the end of its value and a comment on that line), in order; ManifestError for text that is not one, or that names a
    field Triton's model config does not have."""
    fields, start = [], _BLANK.match(text, 0).end()
    while (at := _skip(text, start)) < len(text):
        name = _NAME.match(text, at)
        if name is None:
            raise ManifestError(f"{source}: cannot read the config at character {at} (a field's name was expected); "
                                "correct it there (Triton cannot read it either).")
        if name.group() not in MODEL_CONFIG_FIELDS:
            raise ManifestError(f"{source}: {name.group()} is no field of Triton's model config; correct it (Triton "
                                "refuses the config as it is).")
        end = _skip(text, name.end())
        if text.startswith(":", end):
            end = _skip(text, end + 1)
        end = _value_end(text, end, source)
        trailing = _TRAILING_COMMENT.match(text, end)          # a comment on the value's own line is its
        end = trailing.end() if trailing else end
        fields.append((name.group(), text[start:end]))
        start = _BLANK.match(text, end).end()
        if text.startswith((",", ";"), start):
            start = _BLANK.match(text, start + 1).end()
    return fields


def _skip(text: str, at: int) -> int:
    match = _SPACE.match(text, at)
    return match.end() if match else at


def _value_end(text: str, at: int, source: str) -> int:
    """Where the value starting at `at` ends: a bracketed block with its nested blocks, strings and
    comments, a string (or strings written one after another), or a scalar."""
    if text.startswith(("{", "[", "<"), at):
        depth = 0
        while at < len(text):
            char = text[at]
            if char in "\"'":
                at = _string_end(text, at, source)
                continue
            if char == "#":
                at = text.find("\n", at)
                at = len(text) if at < 0 else at
                continue
            depth += char in "{[<"
            depth -= char in "}]>"
            at += 1
            if depth == 0:
                return at
        raise ManifestError(f"{source}: a bracket is never closed; correct it (Triton cannot read it either).")
    if text.startswith(("\"", "'"), at):
        end = _string_end(text, at, source)
        while text.startswith(("\"", "'"), _skip(text, end)):
            end = _string_end(text, _skip(text, end), source)
        return end
    scalar = _SCALAR.match(text, at)
    if scalar is None:
        raise ManifestError(f"{source}: a field without a value at character {at}; correct it (Triton cannot read "
                            "it either).")
    return scalar.end()


def _string_end(text: str, at: int, source: str) -> int:
    quote, at = text[at], at + 1
    while at < len(text) and text[at] not in (quote, "\n"):
        at += 2 if text[at] == "\\" else 1
    if at >= len(text) or text[at] != quote:
        raise ManifestError(f"{source}: a string is never closed; correct it (Triton cannot read it either).")
    return at + 1


def kept_edits(generated: str, old: str | None, owned: Collection[str], parameter_text: Callable[[str, str], str],
               source: str) -> str:
    """`generated` (a config a build writes: a comment line, then its fields) with what the `old`
    config sets by hand kept: every field but the IDENTITY ones as the old config writes it (each in
    the place of the generated one of its name, the others after them), and its parameters but
    those in `owned` (the generated ones are defaults). `generated` itself where there is no old
    config."""
    if old is None:
        return generated
    comment, _, body = generated.partition("\n")
    new_fields, old_fields = top_level_fields(body, "the new config"), top_level_fields(old, source)
    old_names = {name for name, _ in old_fields}
    parameters = _parameters(new_fields, "the new config")
    parameters.update({key: value for key, value in _parameters(old_fields, source).items() if key not in owned})
    parts, placed = [], set()
    for name, text in new_fields:
        if name == "parameters" or name in placed:
            continue
        if name in IDENTITY or name not in old_names:
            parts.append(text)
        else:
            parts += [old_text for old_name, old_text in old_fields if old_name == name]
            placed.add(name)
    parts += [text for name, text in old_fields
              if name not in IDENTITY and name != "parameters" and name not in placed
              and name not in {new for new, _ in new_fields}]
    parts += [parameter_text(key, value) for key, value in parameters.items()]
    return "\n".join([comment, *parts]) + "\n"


def edits_undone(generated: str, old: str | None, source: str) -> list[tuple[str, str, str]]:
    """The scalar IDENTITY fields (name, backend, platform, max_batch_size) the `old` config sets
    otherwise than `generated` writes them: (name, the old value, the new one), which a build
    replaces."""
    if old is None:
        return []
    new = {name: _scalar(text) for name, text in top_level_fields(generated, "the new config") if name in SCALARS}
    return [(name, _scalar(text), new[name]) for name, text in top_level_fields(old, source)
            if name in new and _scalar(text) != new[name]]


def _scalar(text: str) -> str:
    """A scalar field's value, without its quotes."""
    return _bare(text).partition(":")[2].strip().strip("\"'")


def _bare(text: str) -> str:
    """A field's text without its comments, its spacing made single."""
    return " ".join(re.sub(r"#[^\n]*", "", text).split())


def _parameters(fields: list[tuple[str, str]], source: str) -> dict[str, str]:
    """The parameters the `fields` set, key -> value, in the order they are written (a later one
    of a key replacing an earlier, as Triton's parser does)."""
    found: dict[str, str] = {}
    for name, text in fields:
        if name == "parameters":
            found.update(config_parameters(text, source))
    return found
