"""Carry a `mdiexit train` checkpoint (model.pt) through a channel that takes only small files.

    python scripts/checkpoint_parts.py split model.pt DIR [--half] [--max-mb 15]
    python scripts/checkpoint_parts.py join DIR model.pt

`split` writes DIR/part-N (each at most --max-mb) and DIR/parts.json (their SHA-256). With --half, weight
tensors of 1,024 values or more are rounded to float16 (half the bytes); BatchNorm statistics and small tensors
stay float32. `join` checks the digests and writes a model.pt with float32 weights again. Why: the GPU machine
that trained models/resnet50-fmnist returns at most 64 MiB a call, in files of at most 16 MiB, and ResNet-50's
float32 weights are 95 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import torch

HALF_MIN_VALUES = 1024


def _halve(state: dict) -> dict:
    out = {}
    for name, t in state.items():
        big = t.is_floating_point() and t.numel() >= HALF_MIN_VALUES and "running_" not in name
        out[name] = t.half() if big else t
    return out


def split(src: Path, dst: Path, half: bool, max_mb: float) -> None:
    blob = torch.load(src, map_location="cpu", weights_only=False)
    if half:
        blob["model"] = _halve(blob["model"])
    buf = io.BytesIO()
    torch.save(blob, buf)
    data, size = buf.getvalue(), int(max_mb * 2**20)
    dst.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(0, len(data), size):
        chunk = data[i:i + size]
        name = f"part-{i // size}"
        (dst / name).write_bytes(chunk)
        parts.append({"file": name, "sha256": hashlib.sha256(chunk).hexdigest()})
    (dst / "parts.json").write_text(json.dumps({"half": half, "bytes": len(data), "parts": parts}, indent=1))
    print(f"{src} -> {len(parts)} parts, {len(data) / 2**20:.1f} MiB{' (float16 weights)' if half else ''}")


def join(src: Path, dst: Path) -> None:
    index = json.loads((src / "parts.json").read_text())
    chunks = []
    for part in index["parts"]:
        chunk = (src / part["file"]).read_bytes()
        if hashlib.sha256(chunk).hexdigest() != part["sha256"]:
            raise SystemExit(f"{src / part['file']} is damaged (SHA-256 differs from parts.json); fetch it again")
        chunks.append(chunk)
    blob = torch.load(io.BytesIO(b"".join(chunks)), map_location="cpu", weights_only=False)
    blob["model"] = {k: v.float() if v.dtype == torch.float16 else v for k, v in blob["model"].items()}
    torch.save(blob, dst)
    print(f"{len(index['parts'])} parts -> {dst}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    s.add_argument("--half", action="store_true")
    s.add_argument("--max-mb", type=float, default=15.0)
    j = sub.add_parser("join")
    j.add_argument("src", type=Path)
    j.add_argument("dst", type=Path)
    a = ap.parse_args()
    split(a.src, a.dst, a.half, a.max_mb) if a.cmd == "split" else join(a.src, a.dst)


if __name__ == "__main__":
    main()
