"""Node keys: created, loaded, and refused with a message naming the file and the fix."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import zmq
from zmq.utils import z85

from mdiexit.cli.main import main
from mdiexit.security import (
    CLIENT_DOMAIN,
    KeyFileError,
    NodeAuthenticator,
    check_key_text,
    create_keys,
    load_identity,
    read_public,
    run_keys_dir,
)

NODES = ["source", "w1", "w2"]


@pytest.fixture
def keys(tmp_path):
    out = tmp_path / "keys"
    create_keys(NODES, out)
    return out


def test_created_keys_load_and_secrets_are_private(keys):
    for n in NODES:
        assert (keys / f"{n}.key").is_file()
        assert os.stat(keys / f"{n}.key_secret").st_mode & 0o777 == 0o600
    ident = load_identity("w1", dict.fromkeys(NODES), keys)
    assert set(ident.peers) == set(NODES)
    assert ident.public == ident.peers["w1"] != ident.peers["w2"]
    assert len(ident.secret) == 40


def test_existing_keys_are_not_overwritten(keys):
    with pytest.raises(KeyFileError, match="--force"):
        create_keys(["w1"], keys)


def test_missing_secret_is_refused(keys):
    (keys / "w1.key_secret").unlink()
    with pytest.raises(KeyFileError, match=r"w1.key_secret: secret key file missing.*mdiexit keys"):
        load_identity("w1", dict.fromkeys(NODES), keys)


def test_world_readable_secret_is_refused(keys):
    os.chmod(keys / "w1.key_secret", 0o644)
    with pytest.raises(KeyFileError, match="readable by others.*chmod 600"):
        load_identity("w1", dict.fromkeys(NODES), keys)


def test_malformed_and_wrong_length_keys_are_refused(keys):
    path = keys / "w1.key_secret"
    text = path.read_text()
    path.write_text(text.replace('secret-key = "', 'secret-key = "abc'))
    with pytest.raises(KeyFileError, match="w1.key_secret"):
        load_identity("w1", dict.fromkeys(NODES), keys)
    path.write_text("garbage without any key\n")
    with pytest.raises(KeyFileError, match="w1.key_secret"):
        load_identity("w1", dict.fromkeys(NODES), keys)
    with pytest.raises(KeyFileError, match="40 Z85 characters, got 39"):
        check_key_text("x" * 39, "nodes.w1.public_key")


def test_another_nodes_key_is_refused(keys):
    with pytest.raises(KeyFileError, match="belongs to node 'w2', not 'w1'"):
        load_identity("w1", dict.fromkeys(NODES), keys, secret_file=keys / "w2.key_secret")


def test_key_not_matching_the_cluster_file_is_refused(keys):
    other, _ = zmq.curve_keypair()
    publics = dict.fromkeys(NODES) | {"w1": other.decode()}
    with pytest.raises(KeyFileError, match="does not match node 'w1'"):
        load_identity("w1", publics, keys)


def test_cli_keys_and_a_worker_without_keys(tmp_path, tiny_package):
    from tests.runtime.conftest import write_cluster

    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [1, 1])
    out = subprocess.run([sys.executable, "-m", "mdiexit.cli", "keys", "--cluster", str(cluster), "--out",
                          str(tmp_path / "k")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "k" / "w1.key_secret").is_file() and "public" in out.stdout
    out = subprocess.run([sys.executable, "-m", "mdiexit.cli", "worker", "--cluster", str(cluster), "--name", "w1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "mdiexit: error: node w1: no keys" in out.stderr and "--insecure" in out.stderr
    assert "Traceback" not in out.stderr


def test_operator_keys_are_named_apart_and_only_on_the_cluster_inbox(tmp_path, monkeypatch):
    """An operator's key (KEYS_DIR/operators/) is admitted to the source's cluster inbox as ``operator:NAME`` (never
    a node's name), not on the client endpoint; a stranger's nowhere. A keyless run's keys live in a folder only
    this user can read, where `mdiexit rollout` finds them."""
    keys_dir = tmp_path / "keys"
    create_keys(["source"], keys_dir)
    assert main(["keys", "operator", "--keys-dir", str(keys_dir), "--name", "alice"]) == 0
    create_keys(["stranger"], tmp_path / "other")
    alice = read_public(keys_dir / "operators" / "alice.key")
    stranger = read_public(tmp_path / "other" / "stranger.key")
    ctx = zmq.Context()
    try:
        auth = NodeAuthenticator(ctx, {"source": read_public(keys_dir / "source.key")}, keys_dir / "allowed",
                                 keys_dir / "clients", keys_dir / "operators")
        assert auth.callback("*", alice) and not auth.callback(CLIENT_DOMAIN, alice)
        assert auth.curve_user_id(z85.decode(alice)) == "operator:alice"
        assert not auth.callback("*", stranger)
    finally:
        ctx.term()
    monkeypatch.setenv("MDIEXIT_RUNTIME_DIR", str(tmp_path / "run"))
    assert run_keys_dir("source", 5550) is None  # no run keyed here
    made = run_keys_dir("source", 5550, create=True)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700 and run_keys_dir("source", 5550) == made
