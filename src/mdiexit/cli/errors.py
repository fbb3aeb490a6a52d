"""How a command ends: its exit codes, the user errors that end it in one line, and the optional package a command
may be missing (the extra that brings it). Standard library only: the CLI reads this before any command runs."""

from __future__ import annotations

import sys

# The optional packages, and the extra that brings each: a command that needs one says so in one line.
EXTRA_OF = {"simpy": "sim", "scipy": "sim", "torch": "train", "onnx": "train", "onnxscript": "train",
            "tqdm": "train", "PIL": "client", "matplotlib": "plot", "av": "video"}


def missing_extra(e: ModuleNotFoundError, command: str) -> str | None:
    """The one line for a command whose optional dependency is not installed (None: not an optional one)."""
    module = (e.name or "").split(".")[0]
    if module not in EXTRA_OF:
        return None
    extra = EXTRA_OF[module]
    return f"`mdiexit {command}` needs {module}, which `pip install mdiexit` leaves out: pip install 'mdiexit[{extra}]'"


# How every command ends (docs/reference/exit-codes.md is generated from this).
EXIT_CODES: dict[int, str] = {
    0: "done: for a run, every offered item reached exactly one outcome",
    1: "a run lost or duplicated an item, or stopped early with an error (said in summary.json and on stderr); "
       "`doctor` found a failing check; `status` found no snapshot of a running source; `rollout` was rolled back "
       "(the reason is its last line)",
    2: "a user error, said in one `mdiexit: error: ...` line naming the fix: a bad flag, file, dataset, package, "
       "key, or a missing optional package (the line names the extra to install); a roll-out the source refused",
    130: "interrupted (Ctrl-C)",
}

# Errors that are the user's to fix (bad file, missing dataset...): one line, exit status 2, no traceback.
_USER_ERRORS = (("mdiexit.config", "ConfigError"), ("mdiexit.data", "DataError"), ("mdiexit.package", "PackageError"),
                ("mdiexit.emulation.netns", "NamespaceError"), ("mdiexit.runtime.options", "ClusterError"),
                ("mdiexit.security", "KeyFileError"), ("mdiexit.cli.model", "UsageError"),
                ("mdiexit.models.spec", "ModelSpecError"), ("mdiexit.training.train", "TrainError"),
                ("mdiexit.plot", "PlotError"), ("mdiexit.ops.services", "ServiceError"),
                ("mdiexit.pilot.run", "PilotError"), ("mdiexit.energy", "PowerError"), ("mdiexit.video", "VideoError"))


def user_errors() -> tuple[type[Exception], ...]:
    """The user-error classes of the modules the command has imported (one it did not import raised nothing), so
    that a light command never loads the runtime just to name its errors."""
    return tuple(getattr(sys.modules[m], name) for m, name in _USER_ERRORS if m in sys.modules)
