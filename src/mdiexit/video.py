"""A live video as the source's stream (`mdiexit run --items video:PATH_OR_URL`): a file, an `rtsp://` or
`http://` stream, or a camera (`/dev/videoN`), decoded with PyAV (the `video` extra) and resized to the package's
input.

Freshness first: a camera's frames come at its own rate, whatever the cluster can take. The source keeps only the
newest decoded frame and offers it when admission allows (at the admission rate); a frame replaced by a newer one
before it was offered is *skipped*, counted, and neither lost nor rejected. A file is decoded at its own frame rate
(or `fps`), as if a camera sent it, and the stream ends with it.

    frames = VideoFrames.open("cam.mp4", pkg.input_shape)
    arrivals = VideoArrivals(frames, rate=lambda: 30.0, start=REAL_TIME.now())
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mdiexit.clock import REAL_TIME, WallClock
from mdiexit.inputs import to_input
from mdiexit.runtime.arrivals import Offer
from mdiexit.runtime.ledger import Record

log = logging.getLogger("mdiexit.video")

LIVE_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "/dev/video")


class VideoError(ValueError):
    """A video that cannot be opened or decoded. The message names it and the fix."""


@dataclass
class Frame:
    index: int  # in the stream, from 0
    at_s: float  # its time in the stream (presentation time), s
    x: np.ndarray  # the package's input, uint8 (1, C, H, W)


class VideoFrames:
    """Decodes a video in a background thread at its own pace into a one-frame slot: the newest frame only."""

    def __init__(self, container: Any, input_shape: tuple[int, ...], fps: float | None, live: bool,
                 clock: WallClock = REAL_TIME, on_frame: Callable[[], None] | None = None):
        self.container, self.input_shape, self.fps, self.live, self.clock = container, input_shape, fps, live, clock
        self.on_frame = on_frame  # called from the decoder thread as a frame comes and as the video ends
        self.lock = threading.Lock()  # the decoder thread fills the slot, the admit thread empties it
        self.newest: Frame | None = None
        self.decoded = 0
        self.replaced = 0  # frames overwritten in the slot before anyone took them
        self.ended = False
        self.error: str | None = None
        self.thread = threading.Thread(target=self._decode, name="video", daemon=True)

    @classmethod
    def open(cls, source: str, input_shape: tuple[int, ...], fps: float | None = None,
             clock: WallClock = REAL_TIME, on_frame: Callable[[], None] | None = None) -> VideoFrames:
        """Start decoding ``source`` now (a file plays from its first frame at its own rate, on ``clock``);
        ``on_frame``: a wake-up for whoever takes the frames (a source's loop), at each frame and at the end."""
        frames = cls(_container(source), input_shape, fps, source.startswith(LIVE_PREFIXES), clock, on_frame)
        frames.thread.start()
        return frames

    @staticmethod
    def check(source: str) -> None:
        """Raise VideoError now, before a cluster starts, when ``source`` cannot be opened as a video."""
        _container(source).close()

    def take(self) -> Frame | None:
        """The newest frame not yet taken (None: none since the last take)."""
        with self.lock:
            frame, self.newest = self.newest, None
            return frame

    def close(self) -> None:
        self.ended = True

    def _decode(self) -> None:
        stream = self.container.streams.video[0]
        rate = self.fps or (float(stream.average_rate) if stream.average_rate else 25.0)
        start = self.clock.now()
        try:
            for i, frame in enumerate(self.container.decode(stream)):
                if self.ended:
                    break
                at = float(frame.time) if frame.time is not None and not self.fps else i / rate
                if not self.live and (wait := start + at - self.clock.now()) > 0:
                    self.clock.sleep(wait)  # a file plays at its own rate, as a camera would send it
                x = to_input(frame.to_ndarray(format="rgb24"), self.input_shape)
                with self.lock:
                    self.replaced += self.newest is not None
                    self.newest = Frame(i, at, x)
                    self.decoded += 1
                self._tell()
        except Exception as e:  # noqa: BLE001 - a broken stream ends the run's offers, with the reason
            self.error = f"the video stopped decoding at frame {self.decoded} ({e})"
            log.warning("%s", self.error)
        finally:
            self.ended = True
            self.container.close()
            self._tell()

    def _tell(self) -> None:
        if self.on_frame is not None:
            self.on_frame()


def _container(source: str):
    try:
        import av
    except ImportError:
        raise VideoError("video streams need PyAV, which `pip install mdiexit` leaves out: "
                         "pip install 'mdiexit[video]'") from None
    try:
        container = av.open(source, options={"rtsp_transport": "tcp"} if source.startswith("rtsp://") else None)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"{source}: cannot open the video ({e}); give a video file, an rtsp:// URL or "
                         "/dev/videoN") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{source}: holds no video stream")
    return container


class VideoArrivals:
    """The source's arrivals from a video: the newest frame, at most at ``rate()`` frames a second. Frames the
    source never offered (a newer one came first) are ``skipped``; nobody waits on the answers."""

    labelled = False  # a camera's frames carry no true label

    def __init__(self, frames: VideoFrames, rate: Callable[[], float], start: float, deadline_s: float | None = None):
        self.frames, self.rate, self.deadline_s = frames, rate, deadline_s
        self.next_t = start
        self.offered = 0
        self.done = False

    @property
    def skipped(self) -> int:
        return self.frames.replaced

    def take(self, t: float) -> list[Offer]:
        if self.done or t < self.next_t:
            return []
        frame = self.frames.take()
        if frame is None:
            self.done = self.frames.ended and self.frames.newest is None
            return []
        self.offered += 1
        self.next_t = max(self.next_t + 1.0 / max(self.rate(), 1e-3), t - 1.0)  # no burst after a stall
        return [Offer(frame.x, -1, frame.index, self.deadline_s)]

    def next_at(self, t: float) -> float:
        if self.frames.on_frame is None:  # nobody is told when a frame comes: look again soon
            return max(self.next_t, t + 0.005)
        # the decoder wakes the taker as a frame comes: until the next offer's time, wait for that; past it, for the
        # frame (or the video's end)
        waiting = self.frames.newest is not None or self.frames.ended
        return self.next_t if waiting or t < self.next_t else math.inf

    def answer(self, key: Any, outcome: str, reason: str, record: Record | None) -> None:
        pass

    def stop_taking(self) -> list[Offer]:
        self.done = True
        self.frames.close()
        return []

    def shed(self, overloaded: bool) -> None:
        pass
