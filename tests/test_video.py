"""A video as the source's stream: a real file written here with PyAV, decoded at its own frame rate, the newest
frame offered at the admission rate and the older ones counted as skipped, never lost (mdiexit/video.py)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mdiexit.config import cluster_dict, load_cluster
from mdiexit.config import write_cluster as write_cluster_file
from mdiexit.data import load_test_split
from mdiexit.package import load_package
from mdiexit.runtime.launch import run_cluster
from mdiexit.runtime.options import RunOptions
from mdiexit.runtime.ports import free_ports
from tests.runtime.conftest import write_cluster

av = pytest.importorskip("av")

FPS = 30
FRAMES = 60  # 2 s


def write_video(path: Path, images: np.ndarray) -> Path:
    """An MPEG-4 file of test items, each upscaled to 56 x 56 and repeated as RGB."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.width = stream.height = 56
        stream.pix_fmt = "yuv420p"
        for i in range(FRAMES):
            grey = np.kron(images[i % len(images)][0], np.ones((2, 2), np.uint8))
            frame = av.VideoFrame.from_ndarray(np.repeat(grey[:, :, None], 3, axis=2), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory, tiny_package) -> Path:
    images = load_test_split(load_package(tiny_package)).images[:20]
    return write_video(tmp_path_factory.mktemp("video") / "cam.mp4", images)


def run(cluster: Path, video: Path, rate: float, sink: Path | str | None = None, warmup_s: float = 0.5) -> dict:
    opts = RunOptions(rate=rate, duration_s=5.0, warmup_s=warmup_s, live=False, items=f"video:{video}",
                      drain_timeout_s=30, sink=f"jsonl:{sink}" if isinstance(sink, Path) else sink)
    return run_cluster(cluster, opts).summary


@pytest.mark.cluster  # runs the runtime (in process): not the pure tier
def test_every_frame_is_classified_when_the_cluster_keeps_up_and_each_result_reaches_the_sink(tmp_path, tiny_package,
                                                                                               video):
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [2, 2])
    sink = tmp_path / "results.jsonl"
    s = run(cluster, video, rate=200, sink=sink, warmup_s=2.0)  # far above the video's 30 frames a second
    assert s["lost"] == 0 and s["failed"] == 0 and s["accuracy"] is None  # a camera's frames carry no labels
    assert s["completed"] == s["admitted"] == s["offered"]
    assert s["offered"] + s["skipped"] == FRAMES  # each frame offered once, or skipped; the stream ended with it
    assert s["skipped"] < FRAMES / 4
    assert s["throughput_per_s"] > 0  # measured to the last result: the 2 s video is shorter than 2 x the warm-up
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    classes = load_package(tiny_package).classes
    assert len(lines) == s["offered"] and len({r["item"] for r in lines}) == len(lines)  # one line per frame
    assert sorted(r["item"] for r in lines) == sorted(r["item"] for r in lines if 0 <= r["item"] < FRAMES)
    assert all(r["outcome"] == "result" and r["name"] == classes[r["label"]] and r["latency_ms"] > 0
               and 1 <= r["exit"] for r in lines)


@pytest.mark.cluster  # runs the runtime (in process): not the pure tier
def test_a_slow_admission_keeps_the_newest_frame_and_skips_the_rest(tmp_path, tiny_package, video):
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [2, 2])
    s = run(cluster, video, rate=5)  # 5 of the 30 frames a second
    assert s["lost"] == 0 and s["completed"] == s["admitted"] == s["offered"]
    assert s["skipped"] > FRAMES / 2 and s["offered"] + s["skipped"] <= FRAMES


@pytest.mark.cluster  # runs the runtime (in process): not the pure tier
def test_a_video_that_cannot_be_opened_is_one_line(tmp_path, tiny_package):
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [2, 2])
    out = subprocess.run([sys.executable, "-m", "mdiexit.cli", "run", "--cluster", str(cluster), "--quiet",
                          "--items", f"video:{tmp_path / 'nope.mp4'}", "--duration", "1", "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("mdiexit: error:") and "nope.mp4" in out.stderr


@pytest.mark.cluster  # runs the runtime (in process): not the pure tier
def test_a_sink_that_cannot_be_written_is_one_line(tmp_path, tiny_package):
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [2, 2])
    refused = free_ports(1)[0]  # nothing listens there
    for sink, says in (("ftp://broker/topic", "jsonl:PATH"), (f"jsonl:{tmp_path / 'no' / 'r.jsonl'}", "create it"),
                       (f"mqtt://127.0.0.1:{refused}/site/cam", "cannot reach the MQTT broker"),
                       ("mqtt://127.0.0.1/site/#", "without wildcards"),
                       ("mqtt://cam:secret@127.0.0.1/site/cam", "MDIEXIT_MQTT_PASSWORD")):
        out = subprocess.run([sys.executable, "-m", "mdiexit.cli", "run", "--cluster", str(cluster), "--quiet",
                              "--sink", sink, "--duration", "1", "--out", str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and "Traceback" not in out.stderr and says in out.stderr, out.stderr[-500:]


MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def broker(tmp_path):
    """A real Mosquitto broker on a free loopback port, anonymous (loopback only)."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (scripts/setup.sh installs it as root)")
    port = free_ports(1)[0]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 10, "the broker")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.cluster  # runs the runtime (in process): not the pure tier
def test_a_cameras_results_reach_an_mqtt_broker_once_per_frame(tmp_path, tiny_package, video, broker):
    mqtt = pytest.importorskip("paho.mqtt.client")
    got: list[dict] = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-subscriber")
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = lambda _c, _u, m: got.append({**json.loads(m.payload), "topic": m.topic})
    sub.connect("127.0.0.1", broker)
    sub.subscribe("site/#", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        data = cluster_dict(load_cluster(write_cluster(tmp_path / "c.yaml", tiny_package, [2, 2])))
        data["nodes"][0]["sink"] = f"mqtt://127.0.0.1:{broker}/site/cam1"  # in the file, as a site's service has it
        s = run(write_cluster_file(tmp_path / "c.yaml", data), video, rate=200, warmup_s=2.0)
        assert s["lost"] == 0 and s["completed"] == s["offered"] and s["offered"] + s["skipped"] == FRAMES
        wait_for(lambda: len(got) >= s["offered"], 10, "every result on the topic")
    finally:
        sub.loop_stop()
        sub.disconnect()
    frames = [m["item"] for m in got]
    assert len(frames) == len(set(frames)) == s["offered"]  # each frame's result exactly once
    assert set(frames) <= set(range(FRAMES))
    classes = load_package(tiny_package).classes
    assert all(m["topic"] == "site/cam1" and m["outcome"] == "result" and m["name"] == classes[m["label"]]
               and m["exit"] >= 1 and m["latency_ms"] > 0 and m["version"] for m in got)


@pytest.mark.cluster
def test_a_source_plays_the_video_its_cluster_file_names(tmp_path, tiny_package, video):
    data = cluster_dict(load_cluster(write_cluster(tmp_path / "c.yaml", tiny_package, [2, 2])))
    data["nodes"][0]["stream"] = f"video:{video}"  # the camera's own stream, whatever --items says
    opts = RunOptions(rate=200, duration_s=5.0, warmup_s=2.0, live=False, items="all", drain_timeout_s=30)
    s = run_cluster(write_cluster_file(tmp_path / "c.yaml", data), opts).summary
    assert s["lost"] == 0 and s["completed"] == s["offered"] and s["offered"] + s["skipped"] == FRAMES
    assert s["sources"]["source"]["stream"] == f"video:{video}" and s["sources"]["source"]["accuracy"] is None
    assert s["sources"]["source"]["skipped"] == s["skipped"] < FRAMES / 4



def test_the_decoder_wakes_its_taker_at_every_frame_and_at_the_end(tiny_package, video):
    """A source's loop sleeps until a frame comes (VideoFrames.on_frame wakes it) rather than looking every 5 ms:
    the decoder calls on_frame at every frame and at the end; the arrivals want a look while a frame waits or the
    video has ended, and not at all while they wait for the next frame."""
    from mdiexit.video import VideoArrivals, VideoFrames

    shape = load_package(tiny_package).input_shape
    calls: list[int] = []
    frames = VideoFrames.open(str(video), shape, fps=600.0, on_frame=lambda: calls.append(1))
    frames.thread.join(timeout=30)
    assert frames.ended and frames.error is None
    assert len(calls) == frames.decoded + 1 == FRAMES + 1
    arrivals = VideoArrivals(frames, rate=lambda: 1000.0, start=0.0)
    assert arrivals.next_at(5.0) == 0.0  # the last frame waits: look now
    assert len(arrivals.take(5.0)) == 1
    assert arrivals.next_at(5.0) <= 5.0  # ended: look now, and find it done
    arrivals.take(5.0)
    assert arrivals.done

    idle = VideoFrames(None, shape, None, live=True, on_frame=lambda: None)  # no frame yet, still playing
    assert VideoArrivals(idle, rate=lambda: 30.0, start=0.0).next_at(1.0) == float("inf")
    polled = VideoFrames(None, shape, None, live=True)  # nobody told of frames: look again in 5 ms
    assert VideoArrivals(polled, rate=lambda: 30.0, start=0.0).next_at(1.0) == pytest.approx(1.005)
