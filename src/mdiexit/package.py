"""Model package reader (DESIGN §5): validates manifest.json and the files it names. Imports no torch.

    pkg = load_package("models/mobilenetv2-fmnist")   # raises PackageError naming the field or file
    pkg.tasks[0].path, pkg.default_thresholds, pkg.profile.cheapest_for_accuracy(0.92)
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdiexit.exitprofile import ExitProfile

FORMAT = "mdiexit-model/1"
DTYPES = {"uint8", "int8", "float16", "float32"}


def float32_bytes(shape: tuple[int, ...]) -> int:
    """Bytes of one float32 array of this shape."""
    n = 4
    for d in shape:
        n *= d
    return n


class PackageError(Exception):
    """A model package is missing a file or its manifest is malformed. The message names the field."""


@dataclass(frozen=True)
class TaskSpec:
    index: int  # 1-based, as in DESIGN
    file: str
    path: Path
    macs: int  # segment + exit head, per item
    input_shape: tuple[int, ...]
    features_shape: tuple[int, ...]
    temperature: float

    @property
    def feature_bytes(self) -> int:
        """float32 bytes per item of this task's output features (uncompressed)."""
        return float32_bytes(self.features_shape)


@dataclass(frozen=True)
class CodeOutput:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class CompressionSpec:
    after_task: int
    ratio: float
    encoder: Path
    decoder: Path
    features_shape: tuple[int, ...]
    outputs: tuple[CodeOutput, ...]
    accuracy_cost: float

    @property
    def code_bytes(self) -> int:
        import numpy as np

        return sum(int(np.prod(o.shape)) * np.dtype(o.dtype).itemsize for o in self.outputs)


@dataclass
class Package:
    root: Path
    name: str
    classes: list[str]
    input_shape: tuple[int, ...]
    input_dtype: str
    tasks: list[TaskSpec]
    default_thresholds: list[float]
    profile: ExitProfile
    full_macs: int
    compression: list[CompressionSpec] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def task(self, index: int) -> TaskSpec:
        """Task by its 1-based index."""
        return self.tasks[index - 1]

    def compression_after(self, task_index: int) -> CompressionSpec | None:
        return next((c for c in self.compression if c.after_task == task_index), None)

    @property
    def version(self) -> str:
        """NAME@HASH: the package's name and the start of its manifest's SHA-256 (a retrained or re-exported
        package has another)."""
        digest = hashlib.sha256((self.root / "manifest.json").read_bytes()).hexdigest()[:12]
        return f"{self.name}@{digest}"


# ------------------------------------------------------------------ validation helpers

def _get(d: dict, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(d, dict):
        raise PackageError(f"{where}: expected an object, got {type(d).__name__}")
    if key not in d:
        raise PackageError(f"{where}.{key}: missing")
    v = d[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise PackageError(f"{where}.{key}: expected {name}, got {type(v).__name__} {v!r:.60}")
    return v


def _shape(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                     for x in v):
        raise PackageError(f"{where}: expected a non-empty list of positive ints, got {v!r:.60}")
    return tuple(v)


def _file(root: Path, name: Any, where: str) -> Path:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise PackageError(f"{where}: expected a plain file name inside the package, got {name!r}")
    path = root / name
    if not path.is_file():
        raise PackageError(f"{where}: file {path} is missing; re-export the package")
    return path


def _unit_list(v: Any, n: int, where: str) -> list[float]:
    if not isinstance(v, list) or len(v) != n or not all(isinstance(x, int | float) and not isinstance(x, bool)
                                                          and 0.0 <= x <= 1.0 for x in v):
        raise PackageError(f"{where}: expected {n} numbers in [0, 1], got {v!r:.80}")
    return [float(x) for x in v]


def _parse_tasks(m: dict, root: Path, input_shape: tuple[int, ...]) -> list[TaskSpec]:
    raw = _get(m, "tasks", "manifest", list)
    if not raw:
        raise PackageError("manifest.tasks: at least one task is required")
    tasks, prev = [], input_shape
    for i, t in enumerate(raw, start=1):
        w = f"manifest.tasks[{i - 1}]"
        index = _get(t, "index", w, int)
        if index != i:
            raise PackageError(f"{w}.index: expected {i}, got {index} (tasks must be listed in order 1..K)")
        shape_in = _shape(_get(t, "input_shape", w, list), f"{w}.input_shape")
        if shape_in != prev:
            raise PackageError(f"{w}.input_shape: {list(shape_in)} does not match the previous output {list(prev)}")
        feats = _shape(_get(t, "features_shape", w, list), f"{w}.features_shape")
        macs = _get(t, "macs", w, int)
        temp = _get(t, "temperature", w, float)
        if macs <= 0 or temp <= 0:
            raise PackageError(f"{w}: macs and temperature must be positive")
        tasks.append(TaskSpec(index, t.get("file"), _file(root, t.get("file"), f"{w}.file"), macs, shape_in, feats,
                              temp))
        prev = feats
    return tasks


def _parse_compression(m: dict, root: Path, tasks: list[TaskSpec]) -> list[CompressionSpec]:
    out = []
    for i, c in enumerate(m.get("compression") or []):
        w = f"manifest.compression[{i}]"
        after = _get(c, "after_task", w, int)
        if not 1 <= after < len(tasks):
            raise PackageError(f"{w}.after_task: {after} must name a task boundary 1..{len(tasks) - 1}")
        feats = _shape(_get(c, "features_shape", w, list), f"{w}.features_shape")
        if feats != tasks[after - 1].features_shape:
            raise PackageError(f"{w}.features_shape: {list(feats)} differs from task {after}'s "
                               f"{list(tasks[after - 1].features_shape)}")
        outputs = []
        for j, o in enumerate(_get(c, "outputs", w, list)):
            dtype = _get(o, "dtype", f"{w}.outputs[{j}]", str)
            if dtype not in DTYPES:
                raise PackageError(f"{w}.outputs[{j}].dtype: {dtype!r} not one of {sorted(DTYPES)}")
            outputs.append(CodeOutput(_get(o, "name", f"{w}.outputs[{j}]", str),
                                      _shape(_get(o, "shape", f"{w}.outputs[{j}]", list), f"{w}.outputs[{j}].shape"),
                                      dtype))
        if not outputs:
            raise PackageError(f"{w}.outputs: at least one code output is required")
        out.append(CompressionSpec(after, _get(c, "ratio", w, float), _file(root, c.get("encoder"), f"{w}.encoder"),
                                   _file(root, c.get("decoder"), f"{w}.decoder"), feats, tuple(outputs),
                                   float(c.get("accuracy_cost", 0.0))))
    return out


def _parse_profile(m: dict, k: int) -> ExitProfile:
    p = _get(m, "exit_profile", "manifest", dict)
    grid = _unit_list(_get(p, "thresholds", "manifest.exit_profile", list), len(p.get("thresholds") or [0]),
                      "manifest.exit_profile.thresholds")
    per_exit = _get(p, "per_exit", "manifest.exit_profile", list)
    if len(per_exit) != k:
        raise PackageError(f"manifest.exit_profile.per_exit: expected {k} entries (one per exit), got {len(per_exit)}")
    for i, e in enumerate(per_exit):
        for key in ("exit_fraction", "accuracy"):
            _unit_list(_get(e, key, f"manifest.exit_profile.per_exit[{i}]", list), len(grid),
                       f"manifest.exit_profile.per_exit[{i}].{key}")
    frontier = _get(p, "frontier", "manifest.exit_profile", list)
    if not frontier:
        raise PackageError("manifest.exit_profile.frontier: empty")
    for i, pt in enumerate(frontier):
        _unit_list(_get(pt, "thresholds", f"manifest.exit_profile.frontier[{i}]", list), k,
                   f"manifest.exit_profile.frontier[{i}].thresholds")
    try:
        return ExitProfile.from_json(p)
    except (KeyError, TypeError, ValueError) as e:
        raise PackageError(f"manifest.exit_profile: malformed ({e})") from None


def load_package(root: str | Path, check_onnx: bool = False) -> Package:
    """Read and validate a model package. With check_onnx, also open every ONNX file and check its
    input/output names and shapes against the manifest."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise PackageError(f"{path} not found; a model package is a folder with manifest.json "
                           "(write one with `mdiexit export`)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise PackageError(f"{path}: expected a JSON object at the top level")
    fmt = m.get("format")
    if fmt != FORMAT:
        raise PackageError(f"manifest.format: expected {FORMAT!r}, got {fmt!r}")
    classes = _get(m, "classes", "manifest", list)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise PackageError("manifest.classes: expected a non-empty list of strings")
    inp = _get(m, "input", "manifest", dict)
    input_shape = _shape(_get(inp, "shape", "manifest.input", list), "manifest.input.shape")
    input_dtype = _get(inp, "dtype", "manifest.input", str)
    if input_dtype != "uint8":
        raise PackageError(f"manifest.input.dtype: task 1 takes raw uint8 input, got {input_dtype!r}")
    tasks = _parse_tasks(m, root, input_shape)
    k = len(tasks)
    thresholds = _unit_list(_get(m, "default_thresholds", "manifest", list), k, "manifest.default_thresholds")
    if thresholds[-1] != 0.0:
        raise PackageError(f"manifest.default_thresholds: the last threshold must be 0, got {thresholds[-1]}")
    full_macs = _get(m, "full_macs", "manifest", int)
    pkg = Package(root, _get(m, "name", "manifest", str), classes, input_shape, input_dtype, tasks, thresholds,
                  _parse_profile(m, k), full_macs, _parse_compression(m, root, tasks), m)
    if check_onnx:
        check_onnx_files(pkg)
    return pkg


def check_onnx_files(pkg: Package) -> None:
    """Open every task with ONNX Runtime and check names and shapes (needs onnxruntime, not torch)."""
    import onnxruntime as ort

    for t in pkg.tasks:
        try:
            sess = ort.InferenceSession(str(t.path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise PackageError(f"{t.path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]:.200})") from None
        inputs = {i.name: i for i in sess.get_inputs()}
        outputs = {o.name: o for o in sess.get_outputs()}
        if list(inputs) != ["x"]:
            raise PackageError(f"{t.path}: expected one input named 'x', got {list(inputs)}")
        if list(inputs["x"].shape[1:]) != list(t.input_shape):
            raise PackageError(f"{t.path}: input shape {inputs['x'].shape} != manifest {list(t.input_shape)}")
        if "logits" not in outputs:
            raise PackageError(f"{t.path}: no output named 'logits' (outputs: {list(outputs)})")
        if t.index < pkg.num_tasks and "features" not in outputs:
            raise PackageError(f"{t.path}: task {t.index} must output 'features' for the next task")
        if "features" in outputs and list(outputs["features"].shape[1:]) != list(t.features_shape):
            raise PackageError(f"{t.path}: features shape {outputs['features'].shape} != manifest "
                               f"{list(t.features_shape)}")


# ------------------------------------------------------------------ versions: shipped whole, served side by side

def package_archive(folder: Path) -> tuple[bytes, str]:
    """The package's manifest and model files as a tar archive (no training artifacts), and its SHA-256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as f:
                tar.addfile(info, f)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def incompatible(new: Package, old: Package) -> str | None:
    """Why ``new`` cannot serve beside ``old`` in this cluster (None: it can). Nodes hold tasks by index, and
    clients send the one input shape: the split and the input must match."""
    if new.num_tasks != old.num_tasks:
        return f"it has {new.num_tasks} tasks, the served package {old.num_tasks} (the nodes hold tasks by index)"
    if tuple(new.input_shape) != tuple(old.input_shape):
        return f"its input is {list(new.input_shape)}, the served package's {list(old.input_shape)}"
    if len(new.classes) != len(old.classes):
        return f"it has {len(new.classes)} classes, the served package {len(old.classes)}"
    return None
