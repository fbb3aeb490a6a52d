"""`mdiexit serve` as an application sees it: real image files, many clients, bad requests, overload, metrics and
Ctrl-C. Every service runs as its own process, as a user starts it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest
import zmq
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from mdiexit import Client
from mdiexit.config import load_cluster
from mdiexit.data import load_test_split
from mdiexit.evaluate import all_exit_logits, predicted_labels
from mdiexit.inputs import InputError
from mdiexit.package import load_package
from mdiexit.protocol.codec import decode, describe, encode
from mdiexit.protocol.messages import Request
from mdiexit.runtime.ports import free_ports
from mdiexit.runtime.telemetry import METRICS
from mdiexit.security import create_client_key, create_keys, read_public, read_secret
from tests.runtime.conftest import write_cluster
from tests.runtime.test_recovery import wait_for
from tests.runtime.test_robustness import port_is_free

pytestmark = pytest.mark.cluster


def start_service(tmp_path: Path, package: Path, slowdowns: list[float], *args: str, **cluster_extra) -> tuple:
    keys = tmp_path / "keys"
    names = ["source"] + [f"w{i}" for i in range(1, len(slowdowns))]
    create_keys(names, keys)
    create_client_key(keys)
    client_port, metrics_port = free_ports(2)
    path = write_cluster(tmp_path / "c.yaml", package, slowdowns, keys_dir=str(keys), **cluster_extra)
    text = path.read_text().replace("role: source", f"role: source\n  client_port: {client_port}\n  metrics_port: "
                                                    f"{metrics_port}", 1)
    path.write_text(text)
    cluster = load_cluster(path)
    assert cluster.source.client_port == client_port
    return path, cluster, launch_serve(path, tmp_path, *args)


def launch_serve(path: Path, tmp_path: Path, *args: str) -> subprocess.Popen:
    log = (tmp_path / "serve.log").open("a")
    return subprocess.Popen([sys.executable, "-m", "mdiexit.cli", "serve", "--cluster", str(path), "--quiet",
                             "--out", str(tmp_path / "out"), *args], stdout=log, stderr=subprocess.STDOUT)


def stop_service(proc: subprocess.Popen, tmp_path: Path) -> dict:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()
    return json.loads((tmp_path / "out" / "summary.json").read_text())


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_a_service_answers_files_many_clients_and_bad_requests(tmp_path, tiny_package):
    pkg = load_package(tiny_package)
    test = load_test_split(pkg)
    images = test.images[:40]
    expected_labels, expected_exits = predicted_labels(pkg, all_exit_logits(pkg, images, progress=False))
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im[0]).save(folder / f"{i:03d}.png")
    (folder / "999-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    path, cluster, proc = start_service(tmp_path, tiny_package, [30, 10, 20], "--admission", "fixed", "--rate", "2000",
                                        power="raspberry-pi-4")
    try:
        client = Client.from_cluster(path, timeout_s=90)
        assert client.info.classes == pkg.classes

        # real image files, through the CLI: the labels and exits of single-process evaluation
        out = subprocess.run([sys.executable, "-m", "mdiexit.cli", "classify", "--cluster", str(path), "--json",
                              str(folder)], capture_output=True, text=True, timeout=120)
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert out.returncode == 1  # the corrupt file
        assert "cannot decode" in rows[-1]["error"] and len(rows) == 41
        assert [r["label"] for r in rows[:40]] == list(expected_labels)
        assert [r["exit"] for r in rows[:40]] == list(expected_exits)
        assert all(r["name"] == pkg.classes[r["label"]] for r in rows[:40])

        # bad requests, each answered with an error to its sender alone, while a good client is served
        pub, sec = read_secret(tmp_path / "keys" / "clients" / "client.key_secret")
        ctx = zmq.Context()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.curve_publickey, raw.curve_secretkey = pub, sec
        raw.curve_serverkey = read_public(tmp_path / "keys" / "source.key")
        raw.connect(f"tcp://127.0.0.1:{cluster.source.client_port}")
        wrong_shape = np.zeros((1, 3, 9, 9), np.uint8)
        huge = np.zeros((1, 1, 2048, 2048), np.uint8)
        bad = [[b"\x00garbage"], [b"\x81\xa4kind\xc4\x01Q"],
               encode(Request(request_id=7, arrays=[describe("x", wrong_shape)]), [wrong_shape]),
               encode(Request(request_id=8, package="other@0", arrays=[describe("x", images[:1])]), [images[:1]]),
               encode(Request(request_id=9, arrays=[describe("x", huge)]), [huge])]
        good = []
        for frames in bad:
            raw.send_multipart(frames)
            good.append(client.submit(images[0]))
        replies = []
        poller = zmq.Poller()
        poller.register(raw, zmq.POLLIN)
        while len(replies) < len(bad) and poller.poll(30_000):
            replies.append(decode(raw.recv_multipart())[0])
        raw.close()
        ctx.term()
        assert [r.outcome for r in replies] == ["error"] * len(bad)
        assert {r.request_id for r in replies} >= {7, 8, 9}
        assert "shape" in next(r.reason for r in replies if r.request_id == 7)
        assert "not served" in next(r.reason for r in replies if r.request_id == 8)
        assert "too large" in next(r.reason for r in replies if r.request_id == 9)
        assert [f.result(timeout=60).label for f in good] == [expected_labels[0]] * len(bad)
        with pytest.raises(InputError):  # the client converts, or says why it cannot, before sending
            client.submit(np.zeros((5, 5, 7)))

        # 50 concurrent clients, each its own connection
        answers: dict[int, list] = {}

        def one_client(k: int) -> None:
            with Client.from_cluster(path, timeout_s=90) as c:
                answers[k] = [c.classify(images[(k + j) % 40]).label for j in range(4)]

        threads = [threading.Thread(target=one_client, args=(k,)) for k in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert sorted(answers) == list(range(50))
        for k, labels in answers.items():
            assert labels == [expected_labels[(k + j) % 40] for j in range(4)]
        client.close()

        metrics = scrape(cluster.source.metrics_port)
    finally:
        if proc.poll() is None:
            summary = stop_service(proc, tmp_path)
    assert summary["lost"] == 0 and summary["failed"] == 0
    src = ("source", "source")  # a source's series name it: a site may have several
    assert metrics[("mdiexit_items_total", (("outcome", "result"), src))] == summary["completed"]
    assert metrics[("mdiexit_offered_items_total", (src,))] == summary["offered"]
    assert sum(v for (name, _), v in metrics.items() if name == "mdiexit_items_by_exit_total") == summary["completed"]
    assert metrics[("mdiexit_latency_seconds_count", (src,))] == summary["completed"]
    assert 0 < metrics[("mdiexit_energy_joules_total", ())] <= summary["energy_per_node_j"]["source"]
    assert metrics[("mdiexit_joules_per_item", (src,))] > 0  # the service's energy so far, per completed request
    assert summary["completed"] == 40 + len(bad) + 50 * 4
    dashboard = (Path(__file__).parents[2] / "deploy" / "grafana-dashboard.json").read_text()
    served = {name for name, _ in metrics}
    documented = {n + "_total" if kind == "counter" else n for n, (kind, *_) in METRICS.items()}
    # every documented metric is served, and every served one documented (a histogram serves _count, _sum, ...)
    assert {n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum").removesuffix("_created")
            for n in served} == documented
    assert {m for m in re.findall(r"mdiexit_\w+", dashboard)} <= served  # every panel plots a served metric

    # Ctrl-C left nothing behind: no process of this cluster, no bound port
    wait_for(lambda: subprocess.run(["pgrep", "-f", str(path)], capture_output=True).returncode == 1, 20,
             "every process of the service to exit")
    ports = [n.port for n in cluster.nodes] + [cluster.source.client_port, cluster.source.metrics_port]
    wait_for(lambda: all(port_is_free(p) for p in ports), 20, "every port to be free")


def test_ten_times_overload_is_refused_at_once_and_nothing_is_lost(tmp_path, tiny_package):
    pkg = load_package(tiny_package)
    images = load_test_split(pkg).images[:200]
    # slow devices: a capacity of a few tens of items per second (the planner's limit), offered ten times that;
    # batch 1, the planner's assumption: batches of the tiny model cost far less per item, and would hide the overload
    path, cluster, proc = start_service(tmp_path, tiny_package, [600, 300, 300], "--admission", "fixed",
                                        "--rate", "100000", max_batch=1)
    plan = subprocess.run([sys.executable, "-m", "mdiexit.cli", "plan", "--cluster", str(path), "--json"],
                          capture_output=True, text=True, timeout=120)
    rate = 10 * json.loads(plan.stdout)["throughput_per_s"]
    outcomes: dict[str, int] = {}
    try:
        client = Client.from_cluster(path, timeout_s=120)
        client.classify(images[0])
        rss_before = _rss_mb(proc.pid)
        futures = []
        start = time.monotonic()
        while time.monotonic() < start + 30:
            due = int((time.monotonic() - start) * rate)
            while len(futures) < due:
                i = len(futures)
                futures.append(client.submit(images[i % 200], deadline_ms=None if i % 4 else 2000.0))
            time.sleep(0.005)
        wait(futures, timeout=120)
        rss_after = _rss_mb(proc.pid)
        for f in futures:
            e = f.exception()
            kind = "result" if e is None else type(e).__name__
            outcomes[kind] = outcomes.get(kind, 0) + 1
        client.close()
    finally:
        if proc.poll() is None:
            summary = stop_service(proc, tmp_path)
    assert sum(outcomes.values()) == len(futures) and set(outcomes) <= {"result", "Rejected", "Expired"}, outcomes
    assert outcomes.get("Rejected", 0) > len(futures) / 2 and outcomes.get("result", 0) > 0, outcomes
    assert summary["lost"] == 0 and summary["failed"] == 0
    assert summary["offered"] == summary["completed"] + summary["rejected"] + summary["expired"]
    assert summary["latency_ms"]["p95"] <= 300 + 1000  # the backlog target + 1 s
    assert rss_after - rss_before <= 100


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")



def test_bursts_of_files_on_an_idle_service_are_all_classified(tmp_path, tiny_package):
    """`mdiexit classify` on a folder of 100 images, three times with the service idle in between: every file gets
    its label. A burst the cluster drains within --max-wait-ms waits at the gate, never refused: --no-retry, so that
    the command's backoff (its default) cannot hide a refusal."""
    pkg = load_package(tiny_package)
    images = load_test_split(pkg).images[:100]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, x in enumerate(images):
        Image.fromarray(x[0]).save(folder / f"{i:03d}.png")
    path, cluster, proc = start_service(tmp_path, tiny_package, [30, 10, 20])  # rate adaptation, serve's default
    answers = []
    try:
        Client.from_cluster(path, timeout_s=90).close()  # the service is up
        for _ in range(3):
            time.sleep(1.5)  # the scenario: a service idle for longer than the gate remembers (1 s)
            out = subprocess.run([sys.executable, "-m", "mdiexit.cli", "classify", "--cluster", str(path), "--json",
                                  "--no-retry", str(folder)], capture_output=True, text=True, timeout=180)
            rows = [json.loads(line) for line in out.stdout.splitlines()]
            assert out.returncode == 0 and len(rows) == 100, (out.stderr[-2000:], [r for r in rows if "error" in r])
            answers.append({Path(r["path"]).name: r["label"] for r in rows})
    finally:
        if proc.poll() is None:
            summary = stop_service(proc, tmp_path)
    assert summary["lost"] == 0 and summary["completed"] >= 300
    # the labels a single process gives at the thresholds the service ran at (rate adaptation's, not the defaults)
    labels, _ = predicted_labels(pkg, all_exit_logits(pkg, images, threads=1, progress=False),
                                 summary["config"]["thresholds"])
    expected = {f"{i:03d}.png": int(label) for i, label in enumerate(labels)}
    assert answers == [expected] * 3


def test_clients_ride_out_a_restart_of_the_service(tmp_path, tiny_package):
    """kill -9 of `serve` under a stream of 150 requests/s, the same command started again 1 s later: the client
    reconnects by itself and sends again what was outstanding; every request ends in one outcome, and (nearly)
    every one in a result, none in a timeout."""
    pkg = load_package(tiny_package)
    images = load_test_split(pkg).images[:200]
    path, cluster, proc = start_service(tmp_path, tiny_package, [30, 10, 20])
    futures: list = []
    try:
        with Client.from_cluster(path, timeout_s=60, retry_overloaded=True) as client:
            rate, start = 150.0, time.monotonic()
            killed = restarted = False
            while time.monotonic() < start + 10:
                due = int((time.monotonic() - start) * rate)
                while len(futures) < due:
                    futures.append(client.submit(images[len(futures) % 200]))
                if not killed and time.monotonic() > start + 3:
                    proc.kill()  # kill -9: no drain, no answers; its workers die with it
                    proc.wait(timeout=10)
                    killed, killed_at = True, time.monotonic()
                if killed and not restarted and time.monotonic() > killed_at + 1:
                    proc, restarted = launch_serve(path, tmp_path), True
                time.sleep(0.005)
            wait(futures, timeout=120)
            reconnections = client.reconnections
    finally:
        if proc.poll() is None:
            stop_service(proc, tmp_path)
    outcomes: dict[str, int] = {}
    for f in futures:
        e = f.exception()
        kind = "result" if e is None else type(e).__name__
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert sum(outcomes.values()) == len(futures) and "TimeoutError" not in outcomes, outcomes
    assert outcomes.get("result", 0) >= 0.99 * len(futures), outcomes
    assert reconnections >= 1
