"""`python -m export …`: the `export` command where a shell would run its own `export` builtin."""
from export.cli import main

main(prog_name="python -m export")
