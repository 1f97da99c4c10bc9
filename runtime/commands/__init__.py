"""The `runtime` command and what its subcommands do: one scan (`single`), a CSV of subjects
(`subjects`), the embedded demo (`demo`) and model checks (`verify`)."""
