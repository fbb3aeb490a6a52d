"""A node's device model from the host profile the launcher made before the cluster started (runtime.device)."""

from __future__ import annotations

import json

import pytest

from mdiexit.config import ConfigError, load_cluster
from mdiexit.emulation.device import DEVICE_PROFILE_ENV, NO_PROFILE_FILE
from mdiexit.engine import OrtEngine
from mdiexit.package import load_package
from mdiexit.runtime import device
from mdiexit.runtime.device import calibrate, profile_host, read_profile, work_keys, write_profile
from tests.runtime.conftest import write_cluster


def test_a_node_given_the_host_profile_takes_its_times_and_profiles_nothing(tmp_path, tiny_package):
    cluster = load_cluster(write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10]))
    pkg = load_package(tiny_package)
    held = frozenset({2, 3})
    fake = {key: {1: 0.001 * (i + 1), 8: 0.004 * (i + 1)} for i, key in enumerate(work_keys(pkg, frozenset(
        range(1, pkg.num_tasks + 1))))}  # no real host is this slow: profiling would show
    path = write_profile(tmp_path / "host.json", fake)
    assert read_profile(path) == fake
    engine = OrtEngine(pkg, threads=1, tasks=sorted(held))
    model = calibrate(engine, pkg, held, cluster.node("w1"), cluster, read_profile(path))
    assert model.profiled_s == {key: fake[key] for key in work_keys(pkg, held)}
    assert model.host_s(("task", 2), 1) == fake[("task", 2)][1]


def test_the_host_is_profiled_once_per_process_for_every_task_and_codec(tmp_path, tiny_package):
    cluster = load_cluster(write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10]))
    pkg = load_package(tiny_package)
    first = profile_host(pkg, cluster, threads=1)
    assert set(first) == set(work_keys(pkg, frozenset(range(1, pkg.num_tasks + 1))))
    assert all(b in per_batch and per_batch[b] > 0 for per_batch in first.values() for b in (1, cluster.max_batch))
    assert profile_host(pkg, cluster, threads=1) is first  # every later run and simulation takes the same times


def test_a_device_profile_file_pins_the_emulated_devices(tmp_path, tiny_package, monkeypatch):
    cluster = load_cluster(write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10]))
    pkg = load_package(tiny_package)
    pinned = tmp_path / "profiles" / "devices.json"
    monkeypatch.setenv(DEVICE_PROFILE_ENV, str(pinned))
    monkeypatch.setattr(device, "_host_profiles", {})  # a fresh process
    first = profile_host(pkg, cluster, threads=1)
    stored = json.loads(pinned.read_text())
    assert len(stored) == 1 and pkg.version in next(iter(stored))  # stored under the package's name and hash
    # a later process takes the file's times, not the host's: made 1000x slower, they are what it returns
    for per_batch in next(iter(stored.values())).values():
        for b in per_batch:
            per_batch[b] *= 1000
    pinned.write_text(json.dumps(stored))
    monkeypatch.setattr(device, "_host_profiles", {})
    again = profile_host(pkg, cluster, threads=1)
    assert again == {k: {b: 1000 * s for b, s in v.items()} for k, v in first.items()}
    # another thread count is profiled and added beside it; a damaged file is named, with the fix
    profile_host(pkg, cluster, threads=2)
    assert len(json.loads(pinned.read_text())) == 2
    pinned.write_text("{not json")
    monkeypatch.setattr(device, "_host_profiles", {})
    with pytest.raises(ConfigError, match="--device-profile"):
        profile_host(pkg, cluster, threads=1)


def test_without_a_device_profile_this_hosts_profile_is_kept_in_the_users_cache(tmp_path, tiny_package, monkeypatch):
    """`run`, `simulate` and `plan` on one host emulate the same devices without --device-profile: the first
    profile is kept in the cache under the host's name; `--device-profile none` profiles afresh and keeps nothing."""
    cluster = load_cluster(write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10]))
    pkg = load_package(tiny_package)
    monkeypatch.delenv(DEVICE_PROFILE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(device, "_host_profiles", {})
    first = profile_host(pkg, cluster, threads=1)
    kept = tmp_path / "cache" / "mdiexit" / "device-profile.json"
    stored = json.loads(kept.read_text())
    name = next(iter(stored))
    assert len(stored) == 1 and name.startswith("[") and " ort " in name and pkg.version in name
    for per_batch in stored[name].values():  # a later command takes the kept times: made 1000x slower, they show
        for b in per_batch:
            per_batch[b] *= 1000
    kept.write_text(json.dumps(stored))
    monkeypatch.setattr(device, "_host_profiles", {})
    assert profile_host(pkg, cluster, threads=1) == {k: {b: 1000 * s for b, s in v.items()} for k, v in first.items()}
    monkeypatch.setenv(DEVICE_PROFILE_ENV, NO_PROFILE_FILE)
    monkeypatch.setattr(device, "_host_profiles", {})
    fresh = profile_host(pkg, cluster, threads=1)
    assert all(fresh[k][1] < 100 * first[k][1] for k in first)  # profiled again, not the kept times
    assert json.loads(kept.read_text()) == stored  # and nothing kept
