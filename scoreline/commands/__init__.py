"""Sub-commands of the `scoreline` CLI, one module each (see scoreline/cli.py)."""
