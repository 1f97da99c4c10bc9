"""`trainer`: the training command line. Training commands arrive with the training package."""
from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="medflow")
def main() -> None:
    """Train cross-validated models from a YAML config and a subject CSV."""
