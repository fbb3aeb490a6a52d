from pathlib import Path

import pytest
import yaml

from mdiexit.config import ClusterConfig, ConfigError, load_cluster

REPO = Path(__file__).resolve().parents[1]


def base():
    return {
        "package": "pkg",
        "mode": "mdi-exit",
        "nodes": [
            {"name": "src", "role": "source", "port": 6000, "slowdown": 8, "bandwidth_mbps": 20,
             "latency_ms": 5},
            {"name": "w1", "port": 6001, "tasks": [2, 1], "slowdown": 4, "bandwidth_mbps": 50,
             "latency_ms": 2},
            {"name": "w2", "port": 6002, "slowdown": 16, "compress": "auto", "threads": 2},
        ],
    }


def write(tmp_path, data, name="cluster.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def test_valid_file_loads_with_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pkg").mkdir()
    cfg = load_cluster(write(tmp_path, base()))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.source.name == "src" and [w.name for w in cfg.workers] == ["w1", "w2"]
    assert cfg.package == tmp_path / "pkg"
    assert cfg.node("w1").tasks == (1, 2) and cfg.node("w2").tasks is None
    assert cfg.node("w1").holds(2) and not cfg.node("w1").holds(3) and cfg.node("w2").holds(9)
    assert cfg.neighbours_of("src") == ("w1", "w2")  # full mesh by default
    assert cfg.neighbours_of("w2") == ("src", "w1")
    assert cfg.node("w2").compress == "auto" and cfg.node("w2").threads == 2
    assert cfg.node("src").address == "tcp://127.0.0.1:6000"
    assert cfg.node("w1").rated_macs_per_s == pytest.approx(cfg.node("w2").rated_macs_per_s * 4)
    bw, lat = cfg.link("src", "w1")
    assert bw == 20e6 and lat == pytest.approx(0.007)
    assert cfg.link("w1", "w2") == (50e6, pytest.approx(0.002))
    assert cfg.link("w1", "src") == (50e6, pytest.approx(0.007))  # the sender's egress bandwidth
    assert cfg.link("w2", "src") == (None, pytest.approx(0.005))  # no limit given: unlimited
    oc = cfg.offload_config()
    assert oc.hysteresis_s == pytest.approx(0.002) and oc.hop_limit == 4
    assert oc.stale_after_s == pytest.approx(0.5)
    assert cfg.heartbeat_ms <= 100 and cfg.max_batch == 8


def test_links_and_bandwidth_schedule(tmp_path):
    data = base()
    assert load_cluster(write(tmp_path, data)).links == "measured"  # the file's figures only seed the estimates
    data["links"] = "configured"
    data["nodes"][0]["bandwidth_schedule"] = [[0, 20], [20.5, 1], [50, 20]]
    cfg = load_cluster(write(tmp_path, data))
    assert cfg.links == "configured"
    assert cfg.node("src").bandwidth_schedule == ((0, 20), (20.5, 1), (50, 20))
    assert cfg.link("src", "w1")[0] == 20e6  # a schedule is the emulated truth, never the configured figure
    assert cfg.node("w1").bandwidth_schedule is None


def test_package_resolved_against_the_file_folder(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pkg").mkdir()
    monkeypatch.chdir(REPO)
    cfg = load_cluster(write(tmp_path / "conf", base()))
    assert cfg.package == (tmp_path / "conf" / "pkg").resolve()


def test_yaml_on_off_booleans_and_explicit_neighbours(tmp_path):
    text = yaml.safe_dump(base()) + "neighbours:\n  src: [w1]\n  w1: [w2, src]\n"
    text = text.replace("compress: auto", "compress: off")
    cfg = load_cluster(write(tmp_path, text))
    assert cfg.node("w2").compress == "off"
    assert cfg.neighbours_of("src") == ("w1",) and cfg.neighbours_of("w2") == ()


def test_example_edge4_is_valid():
    cfg = load_cluster(REPO / "examples" / "edge4.yaml")
    assert cfg.mode == "mdi-exit" and len(cfg.workers) == 4
    assert cfg.source.slowdown == 40
    assert sorted(w.slowdown for w in cfg.workers) == [20, 20, 40, 80]
    assert all(20 <= n.bandwidth_mbps <= 50 and 2 <= n.latency_ms <= 5 for n in cfg.nodes)
    assert all(n.port >= 5550 for n in cfg.nodes)
    assert cfg.package.parts[-2:] == ("models", "mobilenetv2-fmnist")
    slow = load_cluster(REPO / "examples" / "edge4-slowlinks.yaml")
    assert all(n.bandwidth_mbps == 5 and n.compress == "off" for n in slow.nodes)
    assert [n.slowdown for n in slow.nodes] == [n.slowdown for n in cfg.nodes]


def edit(path, value):
    def apply(d):
        *head, last = path
        for k in head:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return apply


@pytest.mark.parametrize("change, field", [
    (edit(["nodes", 2, "slowdown"], "fast"), "nodes[2].slowdown: expected a number >= 1, got 'fast'"),
    (edit(["nodes", 1, "slowdown"], 0.5), "nodes[1].slowdown"),
    (edit(["nodes", 1, "port"], 70000), "nodes[1].port"),
    (edit(["nodes", 1, "port"], KeyError), "nodes[1].port: missing"),
    (edit(["nodes", 1, "port"], 6000), "nodes[1].port: 127.0.0.1:6000 is already used by nodes[0]"),
    (edit(["nodes", 1, "name"], "src"), "nodes[1].name: 'src' is already used"),
    (edit(["nodes", 1, "name"], "bad name!"), "nodes[1].name"),
    (edit(["nodes", 1, "name"], KeyError), "nodes[1].name"),
    (edit(["nodes", 1, "role"], "boss"), "nodes[1].role: expected one of source, worker"),
    (edit(["nodes", 0, "role"], "worker"), "nodes: expected at least one node with role 'source'"),
    (edit(["nodes", 1, "weight"], 2), "nodes[1].weight: only a source has one"),
    (edit(["nodes", 0, "weight"], 0), "nodes[0].weight: expected a number > 0, got 0"),
    (edit(["nodes", 1, "tasks"], [0, 1]), "nodes[1].tasks"),
    (edit(["nodes", 1, "tasks"], [1, 1]), "nodes[1].tasks: duplicate"),
    (edit(["nodes", 1, "tasks"], "all"), "nodes[1].tasks"),
    (edit(["nodes", 1, "threads"], 0), "nodes[1].threads"),
    (edit(["nodes", 1, "threads"], 1.5), "nodes[1].threads"),
    (edit(["nodes", 1, "bandwidth_mbps"], -3), "nodes[1].bandwidth_mbps"),
    (edit(["nodes", 1, "bandwidth_mbps"], True), "nodes[1].bandwidth_mbps"),
    (edit(["nodes", 1, "latency_ms"], -1), "nodes[1].latency_ms"),
    (edit(["nodes", 1, "compress"], "maybe"), "nodes[1].compress: expected one of off, on, auto"),
    (edit(["nodes", 1, "sink"], "jsonl:out.jsonl"), "nodes[1].sink: only a source has one"),
    (edit(["nodes", 1, "rated_gmacs"], 0), "nodes[1].rated_gmacs"),
    (edit(["nodes", 1, "cpu_slowdown"], 0.5), "nodes[1].cpu_slowdown"),
    (edit(["nodes", 1, "cpu_slowdown"], "pi4"),
     "nodes[1].cpu_slowdown: 'pi4' is not a board; use a number >= 1 or one of raspberry-pi-3, raspberry-pi-4"),
    (edit(["nodes", 1, "host"], ""), "nodes[1].host"),
    (edit(["nodes", 1, "slowdwn"], 2), "nodes[1].slowdwn: unknown field"),
    (edit(["nodes", 1], "w1"), "nodes[1]: expected a mapping"),
    (edit(["nodes"], []), "nodes: expected a non-empty list"),
    (edit(["mode"], "fastest"), "mode: expected one of local, ddi, ddi-exit, mdi, mdi-static, mdi-exit"),
    (edit(["package"], KeyError), "package: missing"),
    (edit(["package"], 3), "package: expected a path"),
    (edit(["hysteresis_ms"], -1), "hysteresis_ms"),
    (edit(["hop_limit"], "four"), "hop_limit: expected an integer"),
    (edit(["stale_after_ms"], 0), "stale_after_ms"),
    (edit(["heartbeat_ms"], 250), "heartbeat_ms: expected a number > 0 and <= 100"),
    (edit(["max_batch"], 0), "max_batch"),
    (edit(["neighbours"], {"src": ["w9"]}), "neighbours.src[0]: no node named 'w9'"),
    (edit(["neighbours"], {"w7": ["src"]}), "neighbours.w7: no node named"),
    (edit(["neighbours"], {"w1": ["w1"]}), "neighbours.w1[0]: a node is not its own neighbour"),
    (edit(["neighbours"], {"w1": "src"}), "neighbours.w1: expected a list"),
    (edit(["neighbours"], ["src"]), "neighbours: expected a mapping"),
    (edit(["polcy"], {}), "polcy: unknown field"),
    (edit(["links"], "guessed"), "links: expected one of measured, configured"),
    (edit(["nodes", 1, "bandwidth_schedule"], []), "nodes[1].bandwidth_schedule: expected a non-empty list"),
    (edit(["nodes", 1, "bandwidth_schedule"], [[0, 20], [20, 0]]),
     "nodes[1].bandwidth_schedule[1][1]: expected a number > 0, got 0"),
    (edit(["nodes", 1, "bandwidth_schedule"], [[-1, 20]]), "nodes[1].bandwidth_schedule[0][0]: expected a number >= 0"),
    (edit(["nodes", 1, "bandwidth_schedule"], [[0, 20, 5]]),
     "nodes[1].bandwidth_schedule[0]: expected a list of 2 values, got [0, 20, 5]"),
    (edit(["nodes", 1, "bandwidth_schedule"], [[0, "fast"]]), "nodes[1].bandwidth_schedule[0][1]"),
    (edit(["nodes", 1, "bandwidth_schedule"], [[0, 20], [50, 1], [20, 20]]),
     "nodes[1].bandwidth_schedule: times must increase, but entry 2 (20 s) does not come after entry 1 (50 s)"),
    (edit(["nodes", 1, "bandwidth_schedule"], [[5, 20], [5, 1]]), "nodes[1].bandwidth_schedule: times must increase"),
])
def test_invalid_fields_are_named(tmp_path, change, field):
    data = base()
    change(data)
    with pytest.raises(ConfigError) as e:
        load_cluster(write(tmp_path, data))
    assert str(e.value).startswith(field.split(":")[0])
    assert field in str(e.value)


@pytest.mark.parametrize("text, words", [
    ("nodes: [", "not valid YAML"),
    ("- a\n- b\n", "top level"),
    ("", "top level"),
])
def test_not_a_cluster_file(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words):
        load_cluster(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_cluster(tmp_path / "nope.yaml")


def test_check_tasks(tmp_path):
    data = base()
    data["nodes"][2]["tasks"] = [1]
    data["nodes"][0]["tasks"] = [1]
    cfg = load_cluster(write(tmp_path, data))
    cfg.check_tasks(2)
    with pytest.raises(ConfigError, match=r"no node holds task\(s\) \[3\]"):
        cfg.check_tasks(3)
    data["nodes"][1]["tasks"] = [5]
    with pytest.raises(ConfigError, match=r"nodes\[1\].tasks: task 5 does not exist"):
        load_cluster(write(tmp_path, data)).check_tasks(3)


def test_a_cluster_written_inside_the_working_directory_names_its_package_relatively(tmp_path, monkeypatch):
    from mdiexit.config import write_cluster

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "m").mkdir(parents=True)
    out = tmp_path / "docs" / "results" / "c.yaml"
    out.parent.mkdir(parents=True)
    write_cluster(out, {**base(), "package": str(tmp_path / "models" / "m")})
    assert yaml.safe_load(out.read_text())["package"] == "../../models/m"  # no machine's folders in the file
    monkeypatch.chdir(out.parent)  # found from the file's own folder, whatever the working directory
    assert load_cluster(out).package.resolve() == (tmp_path / "models" / "m").resolve()


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_every_example_loads_with_a_shipped_package(example):
    from mdiexit.package import load_package

    cfg = load_cluster(REPO / "examples" / example)
    pkg = load_package(cfg.package, check_onnx=True)  # a newcomer's first run must find the model it names
    assert pkg.num_tasks >= 2 and cfg.source is not None
