"""A node's executors: the threads that make the emulated device's calls off the node's loop (DESIGN §4).

- compute runs each batch the loop hands it (decoding the learned codes it arrived as first), as the emulated
  device would, and posts the outputs back to the loop;
- encode (only where features cross a link as learned codes) does the same for the encoder's calls.

Neither decides anything: what to compute, and what to do with the outputs, is the core's (runtime.core), on the
loop. The executors only hold the device's timeline, so that a batch that waited starts where the last one ended.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from mdiexit.emulation.device import DeviceModel
from mdiexit.runtime import events
from mdiexit.runtime.versions import HeldVersions

# (batch, features, logits, device seconds): a computed batch, posted to the loop
Computed = Callable[[list[events.WorkItem], Any, Any, float], None]
# (send, code arrays, device seconds): an item's code, posted to the loop to be sent
Encoded = Callable[[events.Send, dict[str, np.ndarray], float], None]


class Executors:
    def __init__(self, device: DeviceModel, versions: HeldVersions, post: Callable[[Callable[[], Any]], None],
                 computed: Computed, encoded: Encoded):
        self.device, self.versions, self.post = device, versions, post
        self.computed, self.encoded = computed, encoded
        self.batches: queue.SimpleQueue = queue.SimpleQueue()  # (batch, continued), None: stop
        self.encodes: queue.SimpleQueue = queue.SimpleQueue()  # Send, None: stop

    def compute(self, batch: list[events.WorkItem], continued: bool) -> None:
        """Hand the device ``batch`` (``continued``: it waited while the last one ran, and starts where it ended)."""
        self.batches.put((batch, continued))

    def encode(self, s: events.Send) -> None:
        """Encode the item ``s`` sends; it is sent once its code is there."""
        self.encodes.put(s)

    def close(self) -> None:
        self.batches.put(None)
        self.encodes.put(None)

    def compute_loop(self) -> None:
        """The compute thread: runs the batches handed to it, as the emulated device would."""
        free_at: float | None = None  # when the device's last call ended (its timeline), if work was waiting then
        self.device.start_runtime_clock()  # after the warm-up
        while (job := self.batches.get()) is not None:
            batch, continued = job
            if not continued:
                free_at = None  # the device was idle: this batch starts when it came, not when the last one ended
            seconds, k = 0.0, batch[0].task
            ver = self.versions.of(batch[0])
            for it in batch:
                if it.x is None:  # features that crossed the network as a learned code
                    codec = ver.engine.codec(k - 1)
                    it.x, dec_s, free_at = self.device.run_from(ver.key("decode", k - 1), 1,
                                                                lambda c=codec, it=it: c.decode(it.code), free_at)
                    it.code, seconds = None, seconds + dec_s
            x = batch[0].x if len(batch) == 1 else np.concatenate([it.x for it in batch])
            self.device.charge_runtime()  # `cpu_slowdown`: the runtime's CPU since the last call, paid now
            (features, logits), task_s, free_at = self.device.run_from(
                ver.key("task", k), len(batch), lambda k=k, x=x, e=ver.engine: e.run(k, x), free_at)
            self.post(partial(self.computed, batch, features, logits, seconds + task_s))

    def encode_loop(self) -> None:
        """The encode thread: features leaving as learned codes are encoded as the emulated device would."""
        while (s := self.encodes.get()) is not None:
            k = s.item.task - 1
            ver = self.versions.of(s.item)
            arrays, seconds = self.device.run(ver.key("encode", k), 1, partial(ver.engine.codec(k).encode, s.item.x))
            self.post(partial(self.encoded, s, arrays, seconds))
