"""Node keys and authenticated, encrypted links (DESIGN §6, Security): CurveZMQ on every socket, and a ZAP
handler that admits only the cluster's keys and names the peer by its node name.

    mdiexit keys --cluster F --out DIR      # one keypair per node: DIR/NAME.key, DIR/NAME.key_secret (0600)

A node finds its own secret key at ``DIR/NAME.key_secret`` (``keys_dir`` in the cluster file, or
``--keys-dir``) and every peer's public key in the cluster file (``public_key``) or at ``DIR/PEER.key``.
Each refusal says which file and why. The ZAP handler sets every message's ``User-Id`` to the node name of
the key that authenticated its connection, so a receiver checks a message's ``sender`` against it.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

KEY_CHARS = 40  # a Curve25519 key is 32 bytes, 40 characters in Z85


class KeyFileError(ValueError):
    """A key is missing, malformed, exposed or someone else's. The message names the file and the fix."""


def check_key_text(key: str | bytes, where: str) -> bytes:
    """A Z85 public or secret key as bytes, or KeyFileError saying what is wrong with it."""
    if isinstance(key, str):
        key = key.encode("ascii", "replace")
    if len(key) != KEY_CHARS:
        raise KeyFileError(f"{where}: a key is {KEY_CHARS} Z85 characters, got {len(key)}")
    try:
        z85.decode(key)
    except (ValueError, KeyError, TypeError):
        raise KeyFileError(f"{where}: not a Z85-encoded key") from None
    return key


def create_keys(names: list[str], out: Path, overwrite: bool = False) -> dict[str, str]:
    """One keypair per name in ``out`` (public NAME.key, secret NAME.key_secret with mode 0600).
    Returns name -> public key. Refuses to overwrite an existing secret unless asked."""
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    publics = {}
    for name in names:
        secret = out / f"{name}.key_secret"
        if secret.exists() and not overwrite:
            raise KeyFileError(f"{secret}: exists; pass --force to replace the keys (then redistribute them)")
        pub_file, sec_file = zmq.auth.create_certificates(str(out), name)
        os.chmod(sec_file, 0o600)
        publics[name] = zmq.auth.load_certificate(pub_file)[0].decode()
    return publics


def read_public(path: Path) -> bytes:
    if not path.is_file():
        raise KeyFileError(f"{path}: public key file missing (create keys with `mdiexit keys`)")
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError, IndexError) as e:
        raise KeyFileError(f"{path}: not a key file ({e})") from None
    if public is None:
        raise KeyFileError(f"{path}: holds no public-key line")
    return check_key_text(public, str(path))


def read_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a NAME.key_secret file, which only its owner may read."""
    if not path.is_file():
        raise KeyFileError(f"{path}: secret key file missing (create keys with `mdiexit keys --cluster F --out DIR`)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path}: readable by others (mode {mode:o}); run `chmod 600 {path}`")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError, IndexError) as e:
        raise KeyFileError(f"{path}: not a key file ({e})") from None
    if secret is None or public is None:
        raise KeyFileError(f"{path}: holds no secret-key line; this is a public key file")
    return check_key_text(public, str(path)), check_key_text(secret, str(path))


@dataclass
class Identity:
    """What a node needs for CURVE: its own keypair and the public key of every node it may talk to."""

    name: str
    public: bytes
    secret: bytes
    peers: dict[str, bytes] = field(default_factory=dict)  # node name -> public key (itself included)

    def peer_key(self, name: str) -> bytes:
        try:
            return self.peers[name]
        except KeyError:
            raise KeyFileError(f"no public key for node {name!r}: add `public_key` to it in the cluster file, "
                            f"or put {name}.key in the keys folder") from None


def load_identity(name: str, public_keys: dict[str, str | None], keys_dir: Path | None,
                  secret_file: Path | None = None) -> Identity:
    """This node's identity. ``public_keys`` maps each node to its public key from the cluster file (None:
    read DIR/NODE.key). The secret comes from ``secret_file`` or DIR/NAME.key_secret."""
    if secret_file is None:
        if keys_dir is None:
            raise KeyFileError(f"node {name}: no keys (set `keys_dir` in the cluster file, pass --keys-dir or --key, "
                            "or run with --insecure); create them with `mdiexit keys --cluster F --out DIR`")
        secret_file = keys_dir / f"{name}.key_secret"
    public, secret = read_secret(secret_file)
    peers: dict[str, bytes] = {}
    for peer, text in public_keys.items():
        if text is not None:
            peers[peer] = check_key_text(text, f"nodes.{peer}.public_key")
        elif keys_dir is not None and (keys_dir / f"{peer}.key").exists():
            peers[peer] = read_public(keys_dir / f"{peer}.key")
    owner = next((p for p, k in peers.items() if k == public), None)
    if owner is not None and owner != name:
        raise KeyFileError(f"{secret_file}: this key belongs to node {owner!r}, not {name!r}")
    if name in peers and peers[name] != public:
        raise KeyFileError(f"{secret_file}: does not match node {name!r}'s public key in the cluster; "
                        "use that node's own key_secret file")
    peers[name] = public
    return Identity(name, public, secret, peers)


def allow_key(keys_dir: Path, name: str, public: str) -> Path:
    """The operator's consent for a new device: KEYS_DIR/allowed/NAME.key. The source admits a joiner whose key
    is there, under that name (`mdiexit keys allow`)."""
    check_key_text(public, "public key")
    folder = keys_dir / "allowed"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.key"
    path.write_text(f'# allowed to join as {name}\nmetadata\ncurve\n    public-key = "{public}"\n')
    return path


CLIENT_DOMAIN = "clients"  # the ZAP domain of the source's client endpoint: client keys only
CLIENTS = "clients"  # KEYS_DIR/clients/NAME.key: the applications allowed to send requests


def create_client_key(keys_dir: Path, name: str = "client", overwrite: bool = False) -> Path:
    """A client keypair in KEYS_DIR/clients/, allowed by being there. Returns the secret key file."""
    create_keys([name], keys_dir / CLIENTS, overwrite)
    return keys_dir / CLIENTS / f"{name}.key_secret"


OPERATORS = "operators"  # KEYS_DIR/operators/NAME.key: who may roll a package out (besides the source's own key)
OPERATOR_PREFIX = "operator:"  # an operator key's User-Id: never a node's name


def is_operator(sender: str) -> bool:
    return sender.startswith(OPERATOR_PREFIX)


def run_keys_dir(source: str, port: int, create: bool = False) -> Path | None:
    """Where a one-machine run on a cluster file without keys keeps its ephemeral keys: this user's runtime folder
    (ops.status.runtime_dirs), in a folder of mode 700, so that this user's `mdiexit rollout` finds the source's key
    and nobody else can read it. ``create``: the first folder that can be made (a stale one is emptied); else the
    one that exists (None: no run of this source is keyed here)."""
    from mdiexit.ops.status import runtime_dirs

    name = f"keys-{source}-{port}"
    for folder in runtime_dirs():
        path = folder / name
        if not create:
            if path.is_dir():
                return path
            continue
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.mkdir(mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)
            return path
        except OSError:
            continue
    if create:
        raise KeyFileError(f"no runtime folder could be made for the run's keys (tried "
                           f"{', '.join(str(d) for d in runtime_dirs())}); set MDIEXIT_RUNTIME_DIR")
    return None


class NodeAuthenticator(ThreadAuthenticator):
    """A ZAP handler admitting only known node keys. A message's ``User-Id`` becomes the sending node's name.
    Keys can be added while running (a member that joined), and the source also admits the keys an operator
    allowed in ``allowed_dir`` (NAME.key files, read when an unknown key knocks). On the client endpoint
    (zap_domain CLIENT_DOMAIN) only client keys, from ``clients_dir``, are admitted: a client can never talk
    to a node's cluster inbox, nor a node key to the client endpoint's request path. Operator keys, from
    ``operators_dir`` (the source's only), are admitted to the cluster inbox as ``operator:NAME``: the node lets
    them send a ROLLOUT and its PARTs, nothing else."""

    def __init__(self, ctx: zmq.Context, keys: dict[str, bytes], allowed_dir: Path | None = None,
                 clients_dir: Path | None = None, operators_dir: Path | None = None):
        super().__init__(ctx)
        self._names: dict[bytes, str] = {}
        self._clients: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self.allowed_dir = allowed_dir
        self.clients_dir = clients_dir
        self.operators_dir = operators_dir
        for name, key in keys.items():
            self.allow(name, key)

    def allow(self, name: str, key: bytes) -> None:
        with self._lock:
            self._names[key] = name

    def key_of(self, name: str) -> bytes | None:
        with self._lock:
            return next((k for k, n in self._names.items() if n == name), None)

    @staticmethod
    def _read_keys(folder: Path | None) -> dict[bytes, str]:
        found = {}
        for path in sorted(folder.glob("*.key")) if folder and folder.is_dir() else ():
            try:
                found[read_public(path)] = path.stem
            except KeyFileError:
                continue
        return found

    def callback(self, domain: str, key: bytes) -> bool:  # the credentials provider's hook
        known = self._clients if domain == CLIENT_DOMAIN else self._names
        with self._lock:
            if key in known:
                return True
        found = self._read_keys(self.clients_dir if domain == CLIENT_DOMAIN else self.allowed_dir)
        if domain != CLIENT_DOMAIN:  # an operator's key: named apart, so that it can never pass for a node
            found.update({k: OPERATOR_PREFIX + name for k, name in self._read_keys(self.operators_dir).items()})
        with self._lock:
            for k, name in found.items():
                known.setdefault(k, name)
            return key in known

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = z85.encode(client_public_key)
        with self._lock:
            return self._names.get(key) or self._clients.get(key, "")

    def begin(self) -> None:
        self.start()
        for domain in ("*", CLIENT_DOMAIN):  # "*" is ZAP's default domain: the cluster inboxes
            self.configure_curve_callback(domain, credentials_provider=self)


def make_server(sock: zmq.Socket, ident: Identity) -> None:
    sock.curve_secretkey = ident.secret
    sock.curve_publickey = ident.public
    sock.curve_server = True


def make_client(sock: zmq.Socket, ident: Identity, server: str) -> None:
    sock.curve_secretkey = ident.secret
    sock.curve_publickey = ident.public
    sock.curve_serverkey = ident.peer_key(server)
