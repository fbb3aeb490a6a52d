"""The manual's reference pages are generated from the code and kept up to date with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mdiexit.cli import build_parser, subcommands
from mdiexit.cli.errors import EXIT_CODES
from mdiexit.config import ClusterConfig, NodeConfig
from mdiexit.runtime.report import ITEM_COLUMNS
from mdiexit.runtime.summary import SUMMARY_FIELDS
from mdiexit.runtime.telemetry import METRICS

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


def test_the_committed_reference_is_what_the_code_generates():
    out = subprocess.run([sys.executable, "scripts/gen_reference.py", "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_the_reference_covers_every_command_flag_field_metric_and_exit_code():
    cli = (REFERENCE / "cli.md").read_text()
    for name, parser in subcommands(build_parser()).items():
        assert f"## mdiexit {name}\n" in cli
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in cli, (name, flag)
    cluster = (REFERENCE / "cluster-file.md").read_text()
    for cls in (ClusterConfig, NodeConfig):
        for field in cls.__dataclass_fields__:
            if field != "path":  # where the file was read from: not a key of the file
                assert f"| `{field}` |" in cluster, field
    assert "| `path` |" not in cluster
    outputs = (REFERENCE / "outputs.md").read_text()
    assert all(f"| `{k}` |" in outputs for k in [*SUMMARY_FIELDS, *ITEM_COLUMNS])
    metrics = (REFERENCE / "metrics.md").read_text()
    assert all(name in metrics for name in METRICS)
    codes = (REFERENCE / "exit-codes.md").read_text()
    assert all(f"| {code} |" in codes for code in EXIT_CODES)


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make demo" in readme and "make test" in readme
