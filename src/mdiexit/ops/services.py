"""Supervised services: the systemd unit and environment file of a worker, a source or `serve`, rendered in one
place. `mdiexit install-service` writes them; the examples in deploy/systemd/ are these same renderings (a test
keeps them equal).

A unit runs the node under a dynamic user whose state (the cluster file, the keys, the package, the results) is
/var/lib/mdiexit: systemd makes that folder the service's own, so the secret key stays mode 600 and readable by the
service alone. It restarts the node whatever ends it, and takes its settings from /etc/default/mdiexit-NAME.
Hardening: a read-only system, no new privileges, no capabilities, private /tmp and devices, a system-call
filter; `systemd-analyze security` rates each unit's exposure at most 3.5 (tests/ops/test_services.py).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

ROLES = ("worker", "source", "serve")
STATE_DIR = Path("/var/lib/mdiexit")
DEFAULT_EXEC = Path("/opt/mdiexit/bin/mdiexit")  # `python3 -m venv /opt/mdiexit && /opt/mdiexit/bin/pip install .`

WHAT = {
    "worker": "a worker of the cluster: computes the tasks the source routes to it",
    "source": "the cluster's source: admits the stream, routes it, keeps the ledger",
    "serve": "the cluster's source as a service: classifies what clients send",
}

# the source writes the site's status here each second, for `mdiexit status` (ops/status.py); readable by operators
STATUS_FOLDER = """\
RuntimeDirectory=mdiexit
RuntimeDirectoryMode=0755
Environment=MDIEXIT_RUNTIME_DIR=/run/mdiexit
"""

HARDENING = """\
DynamicUser=yes
StateDirectory=mdiexit
StateDirectoryMode=0700
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateUsers=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
UMask=0077
"""


class ServiceError(ValueError):
    """A service that cannot be written as asked. The message names the fix."""


@dataclass(frozen=True)
class Service:
    role: str  # worker | source | serve
    name: str  # the node's name (the unit is mdiexit-ROLE-NAME.service)
    cluster: Path | None = None  # the cluster file (a member, the source, serve)
    join: str | None = None  # tcp://SOURCE:PORT: a new worker that joins by address (no cluster file)
    executable: Path = DEFAULT_EXEC

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ServiceError(f"--role {self.role!r}: choose one of {', '.join(ROLES)}")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ServiceError(f"--name {self.name!r}: use letters, digits, '-', '_' and '.' (a node's name)")
        if self.join and self.role != "worker":
            raise ServiceError("--join is for a worker; a source or serve unit takes --cluster")
        if not self.join and self.cluster is None:
            raise ServiceError(f"a {self.role} unit needs the cluster file: --cluster F"
                               + (" (or --join tcp://SOURCE:PORT for a new worker)" if self.role == "worker" else ""))
        if self.join and not self.join.startswith("tcp://"):
            raise ServiceError(f"--join {self.join!r}: give the source's address as tcp://HOST:PORT")

    @property
    def unit_name(self) -> str:
        return f"mdiexit-{self.role}-{self.name}.service"

    @property
    def env_file(self) -> Path:
        return Path("/etc/default") / f"mdiexit-{self.role}-{self.name}"

    def command(self) -> str:
        """ExecStart: the node's command line, exactly as a person would type it (settings from the env file)."""
        exe = shlex.quote(str(self.executable))
        if self.role == "worker" and self.join:
            return (f"{exe} worker --join {self.join} --name {self.name} --key {STATE_DIR}/keys/{self.name}.key_secret "
                    f"--source-key {STATE_DIR}/keys/source.key --workdir {STATE_DIR}/{self.name} $MDIEXIT_ARGS")
        if self.role == "worker":
            return f"{exe} worker --cluster ${{MDIEXIT_CLUSTER}} --name {self.name} $MDIEXIT_ARGS"
        out = f"--out {STATE_DIR}/{self.name}"
        if self.role == "serve":
            return f"{exe} serve --cluster ${{MDIEXIT_CLUSTER}} --quiet {out} $MDIEXIT_ARGS"
        return f"{exe} source --cluster ${{MDIEXIT_CLUSTER}} --quiet {out} $MDIEXIT_ARGS"

    def unit(self) -> str:
        stop = ("# SIGTERM: hand queued work back to the source and leave; nothing is lost\n"
                if self.role == "worker" else
                "# SIGTERM: stop admitting, finish what is in flight, answer everything, write summary.json\n")
        return (f"# {self.unit_name}: {WHAT[self.role]}.\n"
                f"# Written by `mdiexit install-service`; settings in {self.env_file}.\n"
                f"# Enable: systemctl daemon-reload && systemctl enable --now {self.unit_name}\n"
                "[Unit]\n"
                f"Description=mdiexit {self.role} {self.name}\n"
                "After=network-online.target\n"
                "Wants=network-online.target\n"
                "StartLimitIntervalSec=0\n\n"
                "[Service]\n"
                "Type=simple\n"
                f"EnvironmentFile={self.env_file}\n"
                f"ExecStart={self.command()}\n"
                f"WorkingDirectory={STATE_DIR}\n"
                "Restart=always\n"
                "RestartSec=1\n"
                + stop +
                "KillSignal=SIGTERM\n"
                "TimeoutStopSec=90\n"
                + STATUS_FOLDER * (self.role != "worker")
                + HARDENING +
                "\n[Install]\n"
                "WantedBy=multi-user.target\n")

    def environment(self) -> str:
        lines = [f"# {self.env_file}: read by {self.unit_name}"]
        if self.cluster is not None:
            lines += ["# The cluster file, with keys_dir and package relative to it: copy it, the keys folder and the",
                      f"# package into {STATE_DIR} (the unit makes that folder its own; each device needs only its own",
                      "# .key_secret and every .key).",
                      f"MDIEXIT_CLUSTER={STATE_DIR / self.cluster.name}"]
        else:
            lines += [f"# A joining worker's keys: {STATE_DIR}/keys/{self.name}.key_secret and the source's public key",
                      f"# {STATE_DIR}/keys/source.key; the package arrives from the source."]
        more = {"worker": "--metrics-port 9101, or for a joiner --host ADDRESS --port 5600 --slowdown 1",
                "source": "--admission rate --target-accuracy 0.92 --duration 86400",
                "serve": "--admission rate --target-accuracy 0.92 --max-wait-ms 250"}[self.role]
        lines += [f"# More `mdiexit {self.role}` options, e.g. {more}",
                  "MDIEXIT_ARGS=", ""]
        return "\n".join(lines)

    def enable_commands(self, written_to: Path) -> list[str]:
        here = written_to / self.unit_name
        env = written_to / self.env_file.name
        return [f"sudo cp {here} /etc/systemd/system/{self.unit_name}",
                f"sudo cp {env} {self.env_file}    # then edit it",
                "sudo systemctl daemon-reload",
                f"sudo systemctl enable --now {self.unit_name}",
                f"systemctl status {self.unit_name}    # and: journalctl -u {self.unit_name} -f"]


def write_service(service: Service, out: Path) -> tuple[Path, Path]:
    """Write the unit and its environment file into `out` (the folder to copy them from). Returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    unit, env = out / service.unit_name, out / service.env_file.name
    unit.write_text(service.unit())
    env.write_text(service.environment())
    return unit, env
