"""Print a package's tasks and exit profile as tables (what `make demo` shows)."""

from __future__ import annotations

import sys

from mdiexit.package import Package


def print_profile(pkg: Package, file=sys.stdout) -> None:
    m = pkg.manifest
    print(f"model package {pkg.name} ({pkg.root}): {pkg.num_tasks} tasks, {pkg.full_macs / 1e6:.1f} M MACs "
          f"for the full model, input {list(pkg.input_shape)} uint8", file=file)
    print(f"\n{'task':>4} {'MACs (M)':>9} {'cum. compute':>12} {'features':>14} {'bytes/item':>10} "
          f"{'temp.':>6} {'val acc':>8}", file=file)
    cum = 0
    for t, raw in zip(pkg.tasks, m["tasks"], strict=True):
        cum += t.macs
        shape = "x".join(map(str, t.features_shape)) if t.index < pkg.num_tasks else "-"
        nbytes = f"{t.feature_bytes:,}" if t.index < pkg.num_tasks else "-"
        print(f"{t.index:>4} {t.macs / 1e6:>9.2f} {cum / pkg.full_macs:>11.1%} {shape:>14} {nbytes:>10} "
              f"{t.temperature:>6.2f} {raw.get('val_accuracy', float('nan')):>8.4f}", file=file)
    grid = pkg.profile.thresholds
    print("\nexit profile on the validation split: fraction of items whose confidence reaches T "
          "(accuracy of those items)", file=file)
    print("   T  " + "".join(f"{'exit ' + str(k):>16}" for k in range(1, pkg.num_tasks)), file=file)
    for j, g in enumerate(grid):
        cells = "".join(f"{pkg.profile.exit_fraction[k][j]:>8.3f} ({pkg.profile.exit_accuracy[k][j]:.3f})"
                        for k in range(pkg.num_tasks - 1))
        print(f"{g:>5.2f} {cells}", file=file)
    op = m.get("default_operating_point", {})
    print(f"\ndefault thresholds {pkg.default_thresholds}: validation accuracy {op.get('val_accuracy', 0):.4f} "
          f"at {op.get('compute_fraction', 0):.1%} of full compute", file=file)
    front = pkg.profile.frontier
    print(f"accuracy/compute frontier ({len(front)} points), a selection:", file=file)
    step = max(1, len(front) // 8)
    for p in front[::step] + ([front[-1]] if (len(front) - 1) % step else []):
        print(f"  compute {p.compute_fraction:>6.1%}  accuracy {p.accuracy:.4f}  thresholds {list(p.thresholds)}",
              file=file)
