"""`python -m runtime …`: the `runtime` command."""
from runtime.commands.cli import main

main()
