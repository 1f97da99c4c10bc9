"""Reading the YAML documents a user writes (model specs, training configs): a safe loader that
refuses duplicate keys, and error messages that say what is wrong and where in the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from runtime.errors import InputError


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What a YAML error says is wrong, with its line and column (1-based) when it has them, on one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return " ".join(str(problem).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def read_yaml_file(path: Path, document: str, error: type[InputError], remedy: str) -> Any:
    """The decoded YAML of the `document` file ("spec", "config") at `path`, read with `UniqueKeyLoader`.

    Raises `error` when the file is missing (its message ends with `remedy`), unreadable or not
    valid YAML.
    """
    if not path.is_file():
        raise error(f"{document} file {path} does not exist or is not a file; {remedy}.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{document} file {path} cannot be read ({exc}); pass a UTF-8 YAML file.") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise error(f"{document} file {path} is not valid YAML: {yaml_problem(exc)}; fix it and retry.") from None
    if expanded_size(data) > MAX_EXPANDED_VALUES:
        raise error(f"{document} file {path} expands to more than {MAX_EXPANDED_VALUES:,} values (aliases repeated "
                    "within aliases), far more than a document of this kind holds; write it without them.")
    return data


# Values a YAML document may hold once its aliases are written out in full: a spec or a config holds
# thousands; a few lines of aliases within aliases can stand for billions.
MAX_EXPANDED_VALUES = 1_000_000


def expanded_size(data: Any) -> int:
    """How many values `data` holds with every shared list or mapping counted each time it appears
    (as JSON would write it), worked out once per shared object."""
    sizes: dict[int, int] = {}

    def size(value: Any) -> int:
        if not isinstance(value, (list, dict)):
            return 1
        key = id(value)
        if key not in sizes:
            sizes[key] = 1                       # a cycle (a YAML alias of an enclosing node) counts once
            items = value.values() if isinstance(value, dict) else value
            sizes[key] = 1 + sum(min(size(item), MAX_EXPANDED_VALUES + 1) for item in items)
        return sizes[key]

    return size(data)
