"""One error hierarchy for everything a user or a file can get wrong.

Every message says what was wrong, where (file, key or value) and what to do about it.
The command-line interfaces turn these into one readable line and a non-zero exit.
"""
from __future__ import annotations


class MedflowError(Exception):
    """Base of every error the project reports to a user."""


class InputError(MedflowError):
    """A scan, slide, CSV or command-line value cannot be used."""


class ManifestError(MedflowError):
    """A model folder or its manifest.json is missing, malformed or tampered with."""


class ModelError(MedflowError):
    """A model file cannot be loaded or run, or returns something unexpected."""


class OutputError(MedflowError):
    """An output cannot be written."""


def install_hint(extra: str) -> str:
    """How to install one of medflow's extras: from the checkout the README installs, or from a
    package index."""
    return f"pip install '.[{extra}]' in the medflow checkout (pip install 'medflow[{extra}]' from a package index)"


def brief(error: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut at a word within `limit` characters (… where cut):
    a library's reason kept in a refusal without a page of it."""
    text = " ".join(str(error).split()) or "no message"
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"
