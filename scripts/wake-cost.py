"""What a pause costs the next piece of work: decode one STATE (the most frequent message) after the thread slept
0, 1, 10 and 100 ms, and print the median thread CPU of each. A node under capacity handles most messages right
after such a pause, so this, more than the decode's hot cost, is what each of its messages pays.

    .venv/bin/python scripts/wake-cost.py    # from the repository root, after scripts/setup.sh
"""

from __future__ import annotations

import statistics
import time

from mdiexit.protocol.codec import Limits, decode, encode
from mdiexit.protocol.messages import State

PAUSES_S = (0.0, 0.001, 0.01, 0.1)
SAMPLES = 60


def main() -> None:
    state = State(sender="jetson-a", backlog_s=0.0123, queue_len=3, service_s={1: 0.01, 2: 0.02, 3: 0.03, 4: 0.04},
                  sent_at=123.456, run_s=3.2)
    frames, limits = encode(state), Limits()
    for pause_s in PAUSES_S:
        cpu_us = []
        for _ in range(SAMPLES):
            if pause_s:
                time.sleep(pause_s)
            start = time.thread_time_ns()
            decode(frames, limits)
            cpu_us.append((time.thread_time_ns() - start) / 1e3)
        print(f"after a pause of {pause_s * 1000:5.1f} ms: decoding a STATE takes {statistics.median(cpu_us):6.1f} µs "
              f"of CPU (median of {SAMPLES})")


if __name__ == "__main__":
    main()
