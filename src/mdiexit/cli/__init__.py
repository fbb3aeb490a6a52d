"""The one command line, `mdiexit`: one module per command group (model, run and serve, plan, sim, bench, ops), the
parser and `main` in main.py, how a command ends (exit codes, user errors) in errors.py. Each command imports what
it needs when it runs."""

from mdiexit.cli.main import build_parser, cmd_run, cmd_source, cmd_worker, main, subcommands

__all__ = ["build_parser", "cmd_run", "cmd_source", "cmd_worker", "main", "subcommands"]
