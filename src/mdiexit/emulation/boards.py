"""How much slower a board's CPU runs the runtime's own work than the development machine: the `cpu_slowdown`
presets.

A preset's factor is the development machine's single-core score over the board's, both from one benchmark:
7-Zip's LZMA benchmark on one thread (`taskset -c 0 7zr b -mmt=1`, the "Tot:" rating in MIPS), the "7-zip single"
column of sbc-bench's results list, which measures every board below with the same command. Branchy integer work,
as 7-Zip's is, is a fair stand-in for an interpreter's; a board's cache and memory may still move Python by more
or less than the ratio says (docs/guide/emulation.md). The presets hold for the development machine, where the
project's benches run; on another host, measure its rating with the same command and give the node the number
`your rating / the board's` instead of the name.
"""

from __future__ import annotations

RESULTS = "https://github.com/ThomasKaiser/sbc-bench/blob/master/Results.md"  # the "7-zip single" column

# the development machine (an AMD EPYC Zen 4 virtual core): the median of three runs of
# `taskset -c 0 7zr b -mmt=1` (4264, 4269, 4277), 7-Zip 26.02 (Debian's p7zip-full)
HOST_MIPS = 4269.0

# board: (its 7-zip single-core MIPS, where the figure is in RESULTS)
CPU_PRESETS: dict[str, tuple[float, str]] = {
    "raspberry-pi-3": (914.0, "Raspberry Pi 3 B+ (BCM2837B0), 1.4 GHz Cortex-A53"),
    "raspberry-pi-4": (1769.0, "Raspberry Pi 4 B (BCM2711), 1800 MHz Cortex-A72, arm64"),
    "raspberry-pi-5": (3305.0, "Raspberry Pi 5 B (BCM2712), 2400 MHz Cortex-A76"),
    "jetson-nano": (1578.0, "Jetson Nano, 1480 MHz Cortex-A57"),
    "jetson-orin-nano": (2153.0, "Jetson Orin Nano, 1510 MHz Cortex-A78AE (JetPack 5)"),
}


def cpu_slowdown_of(spec: float | str | None, host_mips: float = HOST_MIPS) -> float | None:
    """A node's `cpu_slowdown` as a factor: a number stands; a preset is ``host_mips`` over the board's score
    (at least 1: a board faster than the host is not charged less than nothing). Raises ValueError naming the
    presets for an unknown name."""
    if spec is None or isinstance(spec, int | float):
        return None if spec is None else float(spec)
    if spec not in CPU_PRESETS:
        raise ValueError(f"cpu_slowdown: {spec!r} is not a board; use a number >= 1 or one of {', '.join(CPU_PRESETS)}")
    return max(1.0, host_mips / CPU_PRESETS[spec][0])
