"""Exported deeplense models on ONNX Runtime: metadata, execution providers, sessions.

Torch-free on purpose: ``deeplense predict model.onnx`` needs only ONNX Runtime and NumPy.

An exported file carries everything prediction needs in its ``metadata_props`` (see
:data:`METADATA_KEYS`): the class names, the input size and channels, and the exact
transform the model was trained with.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core import atomic, paths
from deeplense_cli.core.cpu import cpu_flags
from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.deploy.defaults import DEVICES, PROVIDERS
from deeplense_cli.runs.task import TargetScaling

if TYPE_CHECKING:
    import onnxruntime

FORMAT = "deeplense-onnx/1"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OOD_OUTPUT = "ood_score"  # exports with an out-of-distribution detector (deploy.ood_graph)
ORT_MISSING = (
    "ONNX Runtime is not installed: pip install 'deeplense[cpu]' (or '[gpu]' on CUDA machines)"
)
# metadata_props keys written by ``deeplense export onnx`` (all values are strings)
METADATA_KEYS = (
    "deeplense.format",
    "deeplense.architecture",
    "deeplense.classes",  # JSON list, in label order
    "deeplense.image_size",
    "deeplense.in_channels",
    "deeplense.transform",  # JSON, deeplense_cli.data.transforms spec
    "deeplense.version",
    "deeplense.source_run",
    "deeplense.checkpoint",
    "deeplense.opset",
    "deeplense.precision",
    "deeplense.ood",  # JSON: the detector's method, threshold and calibration (optional)
    "deeplense.tta",  # the test-time augmentation predict applies by default (optional)
    "deeplense.task",  # axion-mass for a regressor (absent: a classifier)
    "deeplense.target",  # JSON: a regressor's target scaling (deeplense_cli.runs.task)
)


def shareable(path: str | os.PathLike[str]) -> None:
    """Give a finished output file the usual permissions (0666 less the umask); the
    atomic writer's temporary files are private (0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def import_ort() -> Any:
    """``import onnxruntime`` or a DeepLenseError telling how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise DeepLenseError(ORT_MISSING) from None
    return onnxruntime


@dataclass
class ModelInfo:
    """What an exported model says about itself (from its deeplense metadata)."""

    path: Path
    architecture: str
    classes: list[str]
    image_size: int
    in_channels: int
    transform: dict[str, Any]
    precision: str = "fp32"
    opset: int | None = None
    version: str = ""
    source_run: str = ""
    checkpoint: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, path: Path, meta: dict[str, str]) -> ModelInfo:
        if meta.get("deeplense.format") != FORMAT:
            raise DeepLenseError(
                f"{path} is an ONNX model but not a deeplense export (no deeplense metadata); "
                "export one with `deeplense export onnx RUN`"
            )
        try:
            classes = json.loads(meta["deeplense.classes"])
            transform = json.loads(meta["deeplense.transform"])
            image_size = int(meta["deeplense.image_size"])
            in_channels = int(meta["deeplense.in_channels"])
            if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                raise ValueError("class names are not a list of strings")
            if not isinstance(transform, dict):
                raise ValueError("transform is not a mapping")
        except (KeyError, ValueError, TypeError) as exc:
            raise DeepLenseError(
                f"{path} has broken deeplense metadata ({exc}); re-export it"
            ) from None
        opset = meta.get("deeplense.opset")
        return cls(
            path=path,
            architecture=meta.get("deeplense.architecture", "?"),
            classes=classes,
            image_size=image_size,
            in_channels=in_channels,
            transform=transform,
            precision=meta.get("deeplense.precision", "fp32"),
            opset=int(opset) if opset and opset.isdigit() else None,
            version=meta.get("deeplense.version", ""),
            source_run=meta.get("deeplense.source_run", ""),
            checkpoint=meta.get("deeplense.checkpoint", ""),
            extra={k: v for k, v in meta.items() if k not in METADATA_KEYS},
        )


def int8_saturation_warning(info: ModelInfo, device: str, flags: set[str]) -> str | None:
    """Why this int8 model may drift on this CPU (None when it will not).

    ONNX Runtime's uint8 x int8 kernels saturate on x86 CPUs without VNNI when the weights use
    all 8 bits; exports before ``deeplense.int8_scheme`` existed all did.
    """
    scheme = info.extra.get("deeplense.int8_scheme", "u8s8")
    if info.precision != "int8" or device != "cpu" or scheme not in ("u8s8", "s8s8"):
        return None
    if "avx2" not in flags or flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return None
    return (
        f"{info.path.name} is int8 with 8-bit weights ({scheme}), which can saturate ONNX "
        "Runtime's integer kernels on this CPU (AVX2 without VNNI) and move its predictions; "
        "re-export with the default --int8-scheme u8s8-7bit"
    )


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else the cores this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def session_options(
    threads: int | None = None,
    spinning: bool = False,
    optimization: str = "all",
    optimized_model_path: str | os.PathLike[str] | None = None,
) -> onnxruntime.SessionOptions:
    """The session options deeplense uses (BENCHMARKS.md, 'ONNX Runtime versus PyTorch').

    * ``intra_op_num_threads`` = ``threads``, else ``OMP_NUM_THREADS``, else the cores this
      process may use;
    * no spin-waiting between ops: on shared machines busy-waiting threads steal the cores
      other processes need. ``spinning=True`` lets the threads spin during a run and stop
      when it returns (``session.force_spinning_stop``, so they never compete with the
      caller between runs): faster on an idle machine, slower at batch 64 beside busy
      processes (``bench_onnx.py --spin``);
    * every graph optimisation (``ORT_ENABLE_ALL``: constant folding, conv/BN and
      attention/LayerNorm/GELU fusions, NCHWc layouts);
    * ``optimized_model_path``: where to save the optimised graph (to inspect or cache it).
    """
    ort = import_ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads) if threads else default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    so.graph_optimization_level = levels[optimization]
    if spinning:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    else:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if optimized_model_path is not None:
        so.optimized_model_filepath = os.fspath(optimized_model_path)
    so.log_severity_level = 3  # errors only; provider failures are checked explicitly
    return so


def _provider_config(name: str, cache_dir: Path | None) -> Any:
    if name == "tensorrt":
        opts: dict[str, Any] = {"trt_fp16_enable": True}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            opts.update(
                {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache_dir),
                    "trt_timing_cache_enable": True,
                }
            )
        return ("TensorrtExecutionProvider", opts)
    if name == "cuda":
        return ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})
    return "CPUExecutionProvider"


@contextlib.contextmanager
def _captured_ort_output() -> Iterator[io.StringIO]:
    """Catch what ONNX Runtime prints while a GPU provider fails to load.

    Seen on an H200 without TensorRT: its Python layer prints an "EP Error" banner to
    stdout (which broke ``predict --json``) and its C++ logger writes the cause to file
    descriptor 2. Both land in the buffer; the caller keeps the reason and says it in one
    line, or drops it when the fallback was what the user asked for (``auto``).
    """
    buf = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as native:
        os.dup2(native.fileno(), 2)
        try:
            with contextlib.redirect_stdout(buf):
                yield buf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            native.seek(0)
            buf.write(native.read().decode(errors="replace"))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _provider_failure(captured: str) -> str:
    """The cause in ONNX Runtime's provider-loading output: the missing library, if named."""
    text = _ANSI.sub("", captured)
    found = re.search(r"with error: ([^\n]+)", text)
    if found:
        return found.group(1).strip()
    found = re.search(r"(Please install [^\n.]+)", text)
    return found.group(1).strip() if found else ""


def _ort_reason(message: str) -> str:
    """An ONNX Runtime error without its C++ source locations and function signatures."""
    message = re.sub(r"/onnxruntime_src/\S+:\d+ (?:[^()]*\([^()]*\)(?: const)? )?", "", message)
    return message.strip()


def _provider_chain(device: str) -> list[str]:
    # A GPU provider leaves the nodes it cannot run to the ones after it.
    return {"tensorrt": ["tensorrt", "cuda", "cpu"], "cuda": ["cuda", "cpu"], "cpu": ["cpu"]}[
        device
    ]


def _install_hint(device: str) -> str:
    return (
        "install onnxruntime-gpu instead of onnxruntime (pip install 'deeplense[gpu]', never "
        "both) with matching CUDA/cuDNN"
        + (" and TensorRT" if device == "tensorrt" else "")
        + " libraries, or use --device cpu"
    )


def create_session(
    path: str | os.PathLike[str],
    device: str = "auto",
    threads: int | None = None,
    spinning: bool = False,
    optimization: str = "all",
    trt_cache_dir: str | os.PathLike[str] | None = None,
    cache_optimized: bool = True,
) -> tuple[onnxruntime.InferenceSession, str]:
    """An inference session on ``device``; returns ``(session, device actually used)``.

    ``auto`` tries TensorRT, then CUDA, then CPU, taking the first whose provider loads. An
    explicit ``cuda`` or ``tensorrt`` that cannot load is an error: ONNX Runtime may list a
    provider and then silently run on the CPU, so the providers the session really got are
    compared with the request.

    On the CPU, the optimised graph is cached (``cache_optimized``, see
    :func:`optimized_cache_path`): big models then start in a fraction of the time.
    """
    ort = import_ort()
    device = (device or "auto").lower()
    if device not in DEVICES:
        raise DeepLenseError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    path = Path(path)
    if not path.is_file():
        raise DeepLenseError(f"{path}: no such file")
    available = set(ort.get_available_providers())
    cache = Path(trt_cache_dir) if trt_cache_dir else path.parent / ".trt-cache"
    if device == "auto":
        candidates = [d for d in ("tensorrt", "cuda") if PROVIDERS[d] in available] + ["cpu"]
    else:
        if PROVIDERS[device] not in available:
            raise DeepLenseError(
                f"--device {device}: ONNX Runtime here has no {PROVIDERS[device]} "
                f"(available: {', '.join(sorted(available))}); {_install_hint(device)}"
            )
        candidates = [device]
    so = session_options(threads, spinning, optimization)
    last_error = ""
    for candidate in candidates:
        providers = [_provider_config(p, cache) for p in _provider_chain(candidate)]
        if candidate == "cpu" and optimization == "all" and cache_optimized:
            cached = _cached_cpu_session(ort, path, threads, spinning)
            if cached is not None:
                return cached, "cpu"
        gpu = candidate != "cpu"
        try:
            with _captured_ort_output() if gpu else contextlib.nullcontext(io.StringIO()) as said:
                session = ort.InferenceSession(os.fspath(path), so, providers=providers)
        except Exception as exc:
            last_error = _ort_reason(first_line(exc, limit=1000))
            if candidate == "cpu" or device != "auto":
                if _looks_corrupt(last_error):
                    raise DeepLenseError(
                        f"{path} is not a valid ONNX model ({last_error[:200]})"
                    ) from None
                raise DeepLenseError(
                    f"cannot load {path} on {candidate}: {last_error[:300]}"
                ) from None
            continue
        got = session.get_providers()
        if got and got[0] == PROVIDERS[candidate]:
            return session, candidate
        if device != "auto":
            cause = _provider_failure(said.getvalue())
            if cause and got and got[0] == PROVIDERS["cuda"]:
                raise DeepLenseError(
                    f"--device {device}: ONNX Runtime's {PROVIDERS[device]} did not load "
                    f"({cause[:200]}); install its libraries where ONNX Runtime finds them "
                    "(LD_LIBRARY_PATH), or use --device cuda"
                )
            raise DeepLenseError(
                f"--device {device} was requested but {PROVIDERS[device]} failed to load "
                f"(the session fell back to {', '.join(got)}"
                + (f": {cause[:200]}" if cause else "")
                + f"); {_install_hint(device)}"
            )
    raise DeepLenseError(f"cannot create an ONNX Runtime session for {path}: {last_error}")


def optimized_cache_path(ort: Any, path: Path) -> Path:
    """Where the CPU-optimised graph of ``path`` is cached: keyed by the model's bytes, the
    ONNX Runtime version and this CPU's instruction sets (ORT_ENABLE_ALL graphs contain
    hardware-specific layouts, so a cached graph is only reused where it was made)."""

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(ort.__version__.encode())
    digest.update(_cpu_flags().encode())
    return paths.home() / "cache" / "onnx" / f"{digest.hexdigest()[:32]}.onnx"


def _cpu_flags() -> str:

    return " ".join(sorted(cpu_flags())) or "unknown"


def _cached_cpu_session(ort: Any, path: Path, threads: int | None, spinning: bool) -> Any | None:
    """A CPU session from the cached optimised graph, creating the cache entry on a miss.
    None when caching is not possible here (the caller then builds a session normally)."""

    try:
        cached = optimized_cache_path(ort, path)
        if cached.is_file():
            try:
                so = session_options(threads, spinning, optimization="none")
                return ort.InferenceSession(
                    os.fspath(cached), so, providers=["CPUExecutionProvider"]
                )
            except Exception:  # a damaged cache entry: rebuild it
                cached.unlink(missing_ok=True)
        atomic.sweep(cached.parent)  # entries a killed process left half-written
        with atomic.atomic_path(cached, suffix=".onnx") as tmp:
            so = session_options(threads, spinning, "all", optimized_model_path=tmp)
            session = ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
        return session
    except Exception:
        return None


def _looks_corrupt(message: str) -> bool:
    lowered = message.lower()
    return any(
        s in lowered for s in ("protobuf", "invalid_protobuf", "failed to load model", "parse")
    )


class OnnxModel:
    """An exported deeplense model on ONNX Runtime: ``logits(batch)`` for transformed input.

    On a GPU the input and output are bound with IO binding (no extra host copies per
    call; the output buffer stays on the device until it is read).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "auto",
        threads: int | None = None,
        spinning: bool = False,
        optimization: str = "all",
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DeepLenseError(f"{self.path}: no such file")
        try:
            self.session, self.device = create_session(
                self.path, device, threads=threads, spinning=spinning, optimization=optimization
            )
        except DeepLenseError as exc:
            _explain_unloadable(self.path, exc)
            raise
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.info = ModelInfo.from_metadata(self.path, meta)
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        # the logits, and the out-of-distribution score of exports that carry a detector
        names = [o.name for o in outputs]
        if len(inputs) != 1 or not (len(outputs) == 1 or names[1:] == [OOD_OUTPUT]):
            raise DeepLenseError(
                f"{self.path}: expected one input and the outputs {OUTPUT_NAME} (and "
                f"{OOD_OUTPUT}), got {len(inputs)} input(s) and {', '.join(names)}"
            )
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        # test-time augmentation the file asks for (export --tta); predict and evaluate use it
        self.tta = meta.get("deeplense.tta", "none")
        # an axion-mass regressor's target scaling (None: a classifier)
        self.target = TargetScaling.from_metadata(meta, self.path)
        self.ood: dict[str, Any] | None = None
        if len(outputs) == 2:
            try:
                self.ood = dict(json.loads(meta["deeplense.ood"]))
                float(self.ood["threshold"])
            except (KeyError, ValueError, TypeError):
                raise DeepLenseError(
                    f"{self.path} has an {OOD_OUTPUT} output but no valid deeplense.ood "
                    "metadata; re-export it"
                ) from None
        self._ort = import_ort()

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def transform(self) -> dict[str, Any]:
        return self.info.transform

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def describe(self) -> str:
        return (
            f"{self.info.architecture} ({self.info.precision}, ONNX Runtime on "
            f"{self.device}: {self.providers[0]})"
        )

    @property
    def ood_threshold(self) -> float | None:
        """The score above which an image is flagged (None: the file has no detector)."""
        return float(self.ood["threshold"]) if self.ood else None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``(N, classes)`` for a transformed float32 batch ``(N, C, S, S)``."""
        return self.outputs(batch)[0]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and, when the file carries a detector, the out-of-distribution scores
        ``(N,)`` of a transformed batch, in one run."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        names = [self.output_name] + ([OOD_OUTPUT] if self.ood else [])
        if self.device == "cpu":
            got = self.session.run(names, {self.input_name: x})
        else:
            got = self._run_bound(x, names)
        logits = np.asarray(got[0], dtype=np.float32)
        return logits, (np.asarray(got[1], dtype=np.float64) if self.ood else None)

    def _run_bound(self, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
        # GPU path (exercised by benchmarks/bench_gpu.py): copy the batch to the device
        # once, let ORT allocate the outputs on the device, copy them back.
        binding = self.session.io_binding()
        value = self._ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding.bind_ortvalue_input(self.input_name, value)
        for name in names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return [np.asarray(v) for v in binding.copy_outputs_to_cpu()]


def _explain_unloadable(path: Path, exc: DeepLenseError) -> None:
    """Say what a file ONNX Runtime refused is, when the onnx package can read it.

    Seen on a machine whose ONNX Runtime (1.30) was older than its onnx package: a plain
    model's IR version was too new for the runtime, and the user got the runtime's error
    instead of "not a deeplense export". Raises the better error; returns if it has none.
    """
    try:
        import onnx

        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:
        return  # not an ONNX file either: the runtime's error stands
    ModelInfo.from_metadata(path, {p.key: p.value for p in proto.metadata_props})
    ir = re.search(
        r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", str(exc)
    )
    if ir:
        ort = import_ort()
        raise DeepLenseError(
            f"{path} needs a newer ONNX Runtime: its IR version is {ir.group(1)}, onnxruntime "
            f"{ort.__version__} reads up to {ir.group(2)}; upgrade it (pip install -U onnxruntime, "
            "or onnxruntime-gpu where that is the one installed)"
        ) from None


def read_model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """The deeplense metadata of an exported model (loads it on the CPU provider)."""
    model = OnnxModel(path, device="cpu", threads=1)
    return model.info
