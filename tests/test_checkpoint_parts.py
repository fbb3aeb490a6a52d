"""scripts/checkpoint_parts.py: a checkpoint split into small parts (float16 weights) and joined again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdiexit.training.train import load_trained

pytestmark = pytest.mark.training

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "checkpoint_parts.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_split_and_join_keep_the_model_within_float16_and_refuse_a_damaged_part(tiny_checkpoint, tmp_path):
    assert run("split", str(tiny_checkpoint), str(tmp_path / "parts"), "--half", "--max-mb", "0.01").returncode == 0
    parts = sorted((tmp_path / "parts").glob("part-*"))
    assert len(parts) > 1 and all(p.stat().st_size <= 0.01 * 2**20 for p in parts)
    assert run("join", str(tmp_path / "parts"), str(tmp_path / "model.pt")).returncode == 0
    before, after = load_trained(tiny_checkpoint)[0].state_dict(), load_trained(tmp_path / "model.pt")[0].state_dict()
    assert before.keys() == after.keys()
    for name, t in before.items():
        assert after[name].dtype == t.dtype, name
        if "running_" in name or not t.is_floating_point():
            assert torch.equal(after[name], t), name  # statistics and counters travel exactly
        else:
            assert torch.allclose(after[name], t, rtol=1e-3, atol=1e-4), name
    damaged = bytearray(parts[0].read_bytes())
    damaged[0] ^= 0xFF
    parts[0].write_bytes(bytes(damaged))
    failed = run("join", str(tmp_path / "parts"), str(tmp_path / "again.pt"))
    assert failed.returncode != 0 and "damaged" in failed.stderr and not (tmp_path / "again.pt").exists()
