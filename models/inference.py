"""Paddle Inference engines: the extractor exported once to a static graph and run by an optimised predictor.

Export: `paddle.jit.save` of the loaded dygraph layer with a fixed `InputSpec` — the extractor takes
`[None, 3, 224, 224]`, its BatchNorms folded into the convs first (models/resnet.py `folded`: the same numbers,
bit for bit, and a predictor that starts in ~0.2 s instead of ~3 s); the predictor (optional, see
`inference_engines`) takes `[None, seg_num, 2048]`, and because the peephole LSTM's Python loop unrolls over
the time steps, an exported predictor only accepts that seg_num. Exports are cached in
`cache_dir/<weights key>-<net>-<layers|seg_num>/`, written into a temporary directory and renamed into place, so
concurrent or interrupted builds never leave a half-written model, and reused by later builds (re-exported when
what `export.json` records — Paddle version, input shape, folding — differs).

Run: `paddle.inference.Config` + `create_predictor`. CPU: oneDNN with `threads` math threads (default: from
the cgroup CPU quota, models/cgroup.py), fp32 (the faithful default) or oneDNN bf16 (CPUs with avx512_bf16 /
amx_bf16 only); int8 is not Paddle's (its oneDNN INT8 passes do not take PIR programs): the extractor's ONNX
graph quantised by ONNX Runtime, run by OpenVINO (models/quantise.py), cached in the same scheme. GPU: CUDA,
fp32 with TF32 off (`gpu_precision_plan`) or fp16; with TensorRT, the export is converted once by
`paddle.tensorrt.convert` (Paddle 3's route for PIR programs) into
`<export>/trt-<precision>-b<max batch>-<gpu model>/`, keyed and written like the export. The choices are
pure functions (`config_plan`, `gpu_precision_plan`, `tensorrt_plan`, `tensorrt_entry`) so that the GPU
branches are testable on a CPU-only build; none of it has run on a GPU here (docs/performance.md).

Threads: a predictor is not safe for concurrent `run`s, so each engine serialises its calls with a lock;
calling from a thread other than the one that created the predictor works (measured, and tested), which
is what `worker.pipeline.ModelThread` does. Note that `run()` holds the GIL for its whole duration
(measured: another Python thread gets ~1% of its normal progress meanwhile), unlike eager Paddle.
Numbers and the reasons for each choice: docs/performance.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, get_args

import numpy as np
import paddle

from models import cgroup
from models.engines import DygraphEngine, Engine
from models.errors import ConfigError
from models.options import Device, Precision
from models.resnet import folded

log = logging.getLogger(__name__)

DEVICES: tuple[Device, ...] = get_args(Device)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INT8_MODULES = ("onnx", "onnxruntime", "openvino")
MODEL_STEM = "model"
META_FILE = "export.json"
EXTRACTOR_INPUT = "images"
PREDICTOR_INPUT = "features"
DEFAULT_GPU_MEMORY_MB = 1024
DEFAULT_MAX_BATCH = 32
# CPU extractor runs are chunks of this many frames (see InferenceEngine): as fast per frame as 32 with
# oneDNN here (measured: 12-13 frames/s at 8 and 16, 9-12 at 32, fp32, 2 cores), at most 7 padded frames.
DEFAULT_CPU_CHUNK = 8
TRT_WORKSPACE = 1 << 30

# How many exports this process has made (tests check that a second build reuses the cache).
export_count = 0


class EngineOptionsError(ConfigError, ValueError):
    """The requested device / precision / TensorRT combination cannot run here."""


def default_threads() -> int:
    """CPU math threads when none are asked for: from the cgroup CPU quota, capped by the affinity mask
    (models/cgroup.py; decided and logged once per process)."""
    return cgroup.thread_plan().threads


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty when /proc/cpuinfo is unreadable)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_supports_bf16() -> bool:
    return bool(cpu_flags() & set(BF16_FLAGS))


def check_options(device: str, precision: str, tensorrt: bool = False) -> None:
    """Raise EngineOptionsError, with the reason and the alternative, for a combination that cannot run here."""
    if device not in DEVICES:
        raise EngineOptionsError(f"device must be one of {list(DEVICES)}, not {device!r}")
    if precision not in PRECISIONS:
        raise EngineOptionsError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
    if precision == "int8":
        if device != "cpu" or tensorrt:
            raise EngineOptionsError(
                "precision int8 is the CPU (ONNX Runtime) mode: set device cpu, tensorrt false; on GPU use fp16"
            )
        missing = [name for name in INT8_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            raise EngineOptionsError(
                f"precision int8 needs {' and '.join(missing)}, which this installation lacks: "
                "pip install 'videotag[int8]'"
            )
    if device == "cpu":
        if tensorrt:
            raise EngineOptionsError("TensorRT needs device gpu")
        if precision == "fp16":
            raise EngineOptionsError("precision fp16 is for GPUs (TensorRT); on CPU use fp32 or bf16")
        if precision == "bf16" and not cpu_supports_bf16():
            raise EngineOptionsError(
                "precision bf16 needs a CPU with native bfloat16 (avx512_bf16 or amx_bf16 in /proc/cpuinfo, "
                "e.g. Intel Cooper Lake / Sapphire Rapids or AMD Zen 4); this CPU has neither: use precision fp32"
            )
    else:
        if precision == "bf16":
            raise EngineOptionsError("precision bf16 is the CPU (oneDNN) mode; on GPU use fp32 or fp16")
        if not paddle.is_compiled_with_cuda():
            raise EngineOptionsError("device gpu needs a CUDA build of paddlepaddle (paddlepaddle-gpu)")
        if tensorrt and tuple(paddle.inference.get_trt_compile_version()) == (0, 0, 0):
            raise EngineOptionsError(
                "tensorrt needs a paddlepaddle-gpu build with TensorRT (this one has none): "
                "install one, or set tensorrt false"
            )
        if tensorrt and importlib.util.find_spec("tensorrt") is None:
            raise EngineOptionsError(
                "tensorrt needs NVIDIA's `tensorrt` Python package, which Paddle's TensorRT "
                "converter imports: install the one matching "
                "paddle.inference.get_trt_compile_version() (deploy/Dockerfile.gpu: "
                "TENSORRT_PACKAGE), or set tensorrt false"
            )


def config_plan(
    device: str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    tensorrt: bool = False,
    *,
    gpu_memory_mb: int = DEFAULT_GPU_MEMORY_MB,
    device_id: int = 0,
) -> list[tuple[str, tuple[Any, ...]]]:
    """The `paddle.inference.Config` calls, in order, as (method name, args): no side effects, no hardware check.

    With `tensorrt`, the Config is for a program that `convert_for_tensorrt` made already (Paddle 3's route
    for PIR programs: its TensorRT engine ops carry their own precision), so it only runs it on the GPU in
    fp32; the legacy `enable_tensorrt_engine` subgraph route is for pre-PIR programs.
    """
    PrecisionType = paddle.inference.PrecisionType
    # (No enable_memory_optim: with Paddle 3's PIR programs its pass is missing and create_predictor fails.)
    plan: list[tuple[str, tuple[Any, ...]]] = [("disable_glog_info", ()), ("switch_ir_optim", (True,))]
    if device == "cpu":
        plan += [
            ("disable_gpu", ()),
            ("enable_mkldnn", ()),
            ("set_cpu_math_library_num_threads", (threads or default_threads(),)),
        ]
        if precision == "bf16":
            plan.append(("enable_mkldnn_bfloat16", ()))
        return plan
    # Without TensorRT, fp16 is Paddle's GPU mixed precision; with it, the converted engines hold the fp16 kernels.
    gpu_precision = PrecisionType.Half if precision == "fp16" and not tensorrt else PrecisionType.Float32
    plan.append(("enable_use_gpu", (gpu_memory_mb, device_id, gpu_precision)))
    return plan


def gpu_precision_plan(device: str, precision: str) -> tuple[dict[str, str], dict[str, bool]]:
    """(environment variables, Paddle TF32 switches) for `precision` on `device`.

    Faithful fp32 on a GPU means no TF32 (Ampere and later run fp32 matmuls and convolutions with a 10-bit
    mantissa by default): NVIDIA_TF32_OVERRIDE=0 turns it off in cuBLAS, cuDNN and TensorRT alike (read when
    the libraries initialise, so it must be set before CUDA is first used), and Paddle's own switches
    (`core.set_cublas_switch` / `set_cudnn_switch`, which decide whether Paddle asks for TF32 math) are
    turned off too. fp16 leaves both alone: it is the fast mode, and TensorRT picks its own kernels.
    """
    if device != "gpu" or precision != "fp32":
        return {}, {}
    return {"NVIDIA_TF32_OVERRIDE": "0"}, {"set_cublas_switch": False, "set_cudnn_switch": False}


def set_up_gpu_precision(
    device: str, precision: str, environ: MutableMapping[str, str] = os.environ, core: Any = None
) -> list[str]:
    """Apply `gpu_precision_plan` (before the first CUDA use); returns what it set, for the log and tests."""
    env, switches = gpu_precision_plan(device, precision)
    done = []
    for name, value in env.items():
        environ[name] = value
        done.append(f"{name}={value}")
    if switches:
        core = core if core is not None else paddle.base.core
        for name, on in switches.items():
            getattr(core, name)(on)
            done.append(f"core.{name}({on})")
    if done:
        log.info("GPU %s: TF32 off (%s)", precision, ", ".join(done))
    return done


def tensorrt_plan(precision: str, max_batch: int, image_size: int = 224) -> dict[str, Any]:
    """What `paddle.tensorrt.convert` is given for the extractor: dynamic batch 1..max_batch, optimised for
    full batches (the model thread merges videos' frames into them), TensorRT precision FP16 or FP32."""
    frame = [3, image_size, image_size]
    return {
        "input": EXTRACTOR_INPUT,
        "min": [1, *frame],
        "opt": [max_batch, *frame],
        "max": [max_batch, *frame],
        "precision": "FP16" if precision == "fp16" else "FP32",
        "workspace": TRT_WORKSPACE,
    }


def tensorrt_entry(export_dir: Path, plan: dict[str, Any], gpu_name: str) -> Path:
    """Converted programs live beside the export they come from, one per precision, batch range and GPU model
    (a TensorRT engine is built for one GPU model and TensorRT version): `<export>/trt-fp16-b64-<gpu>/`."""
    gpu = "".join(c if c.isalnum() or c in "-_." else "_" for c in gpu_name)[:48]
    return export_dir / f"trt-{plan['precision'].lower()}-b{plan['max'][0]}-{gpu}"


def tensorrt_meta(plan: dict[str, Any], gpu_name: str, trt_version: str) -> dict[str, Any]:
    return {"net": "extractor-tensorrt", **plan, "gpu": gpu_name, "tensorrt": trt_version, "paddle": paddle.__version__}


def convert_for_tensorrt(export_dir: Path, target: Path, plan: dict[str, Any], meta: dict[str, Any]) -> Path:
    """`paddle.tensorrt.convert` of the exported PIR program into `target` (atomically, reused while its
    meta matches): TensorRT engines for every subgraph TensorRT can run, the rest left to Paddle's GPU ops."""

    def write(tmp: Path) -> None:
        from paddle.tensorrt.export import Input, PrecisionMode, TensorRTConfig, convert

        shapes = Input(
            min_input_shape=tuple(plan["min"]),
            optim_input_shape=tuple(plan["opt"]),
            max_input_shape=tuple(plan["max"]),
            name=plan["input"],
        )
        config = TensorRTConfig(
            inputs=[shapes],
            save_model_dir=str(tmp / MODEL_STEM),
            precision_mode=PrecisionMode[plan["precision"]],
            workspace_size=plan["workspace"],
        )
        convert(str(export_dir / MODEL_STEM), config)

    return build_atomically(target, meta, write)


def model_files(model_dir: str | Path) -> tuple[Path, Path]:
    """(program, params) of an export: PIR `model.json` (Paddle 3) or legacy `model.pdmodel`."""
    model_dir = Path(model_dir)
    params = model_dir / f"{MODEL_STEM}.pdiparams"
    for suffix in (".json", ".pdmodel"):
        program = model_dir / f"{MODEL_STEM}{suffix}"
        if program.is_file() and params.is_file():
            return program, params
    raise FileNotFoundError(f"{model_dir}: no exported {MODEL_STEM}.json/.pdmodel with {MODEL_STEM}.pdiparams")


def make_config(
    model_dir: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    tensorrt: bool = False,
    **plan_options: Any,
) -> paddle.inference.Config:
    """A predictor Config for an exported model; raises EngineOptionsError for an impossible combination."""
    check_options(device, precision, tensorrt)
    program, params = model_files(model_dir)
    config = paddle.inference.Config(str(program), str(params))
    for method, args in config_plan(device, precision, threads, tensorrt, **plan_options):
        getattr(config, method)(*args)
    return config


class InferenceEngine:
    """One Paddle Inference predictor behind the `Engine` call signature: float32 numpy in, numpy out.

    Calls are serialised (a predictor runs one batch at a time) and may come from any thread.
    `expected_shape` (trailing dims) turns a shape the export cannot take into a clear error.
    With `chunk`, every call runs as fixed-size chunks of `chunk` rows, the last one zero-padded: oneDNN
    keeps primitives and reordered weights per input shape (~200 MB more for each new batch size with
    ResNet-101, measured), so a single shape bounds memory however callers batch; and `run()` holds the GIL
    (measured), so shorter runs let decoding threads in more often. Rows are independent: padding does not
    change the other rows' outputs.
    """

    def __init__(
        self,
        config: paddle.inference.Config,
        expected_shape: tuple[int, ...] | None = None,
        name: str = "",
        chunk: int | None = None,
    ) -> None:
        self.name = name
        self.expected_shape = expected_shape
        self.chunk = chunk
        self._predictor = paddle.inference.create_predictor(config)
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])
        self._lock = threading.Lock()
        self.calls = 0  # predictor runs

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(batch)
        self._predictor.run()
        self.calls += 1
        out: np.ndarray = self._output.copy_to_cpu()  # (Paddle types it Any)
        return out

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.expected_shape is not None and tuple(batch.shape[1:]) != self.expected_shape:
            raise ValueError(
                f"{self.name or 'engine'} was exported for input [N, "
                f"{', '.join(map(str, self.expected_shape))}], got {list(batch.shape)} "
                "(the predictor is exported per seg_num: build the tagger with that seg_num)"
            )
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            if self.chunk is None or len(batch) == self.chunk:
                return self._run(batch)
            parts = []
            for start in range(0, len(batch), self.chunk):
                part = batch[start : start + self.chunk]
                rows = len(part)
                if rows < self.chunk:
                    part = np.concatenate([part, np.zeros((self.chunk - rows, *part.shape[1:]), np.float32)])
                parts.append(self._run(part)[:rows])
            return np.concatenate(parts)


def cache_entry(cache_dir: str | Path, weights_key: str, net: str, size: int) -> Path:
    """`cache_dir/<weights key>-<net>-<layers|seg_num>`."""
    return Path(cache_dir) / f"{weights_key}-{net}-{size}"


def _meta(net: str, size: int, input_shape: list[int | None]) -> dict[str, Any]:
    shape = [-1 if d is None else d for d in input_shape]
    return {"net": net, "size": size, "input_shape": shape, "paddle": paddle.__version__}


def _is_current(target: Path, meta: dict[str, Any], files: Callable[[Path], object]) -> bool:
    try:
        files(target)
        return bool(json.loads((target / META_FILE).read_text(encoding="utf-8")) == meta)
    except (OSError, ValueError):
        return False


def build_atomically(
    target: Path, meta: dict[str, Any], write: Callable[[Path], None], files: Callable[[Path], object] = model_files
) -> Path:
    """Make `target` with `write(tmp)` in a temporary sibling renamed into place, unless a current one (its
    `export.json` equal to `meta`, and `files(target)` not raising OSError: the model's files are there) is
    there already. A stale one is replaced; a concurrent build's complete result is accepted."""
    if _is_current(target, meta, files):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by users of one machine
        if target.exists():  # stale: move it aside first (rename over a non-empty directory fails)
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            os.replace(target, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_current(target, meta, files):  # not a concurrent build's complete export
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s in %s", meta["net"], target)
    return target


def export(
    layer: paddle.nn.Layer | Callable[[], paddle.nn.Layer],
    target: Path,
    input_shape: list[int | None],
    input_name: str,
    meta: dict[str, Any],
) -> Path:
    """`paddle.jit.save` the layer into `target`, atomically (`build_atomically`).

    A current export already at `target` is reused (returned untouched); a stale one (other Paddle version,
    other input shape) is replaced. `layer` may be a function that makes it, called only when an export is due.
    """

    def write(tmp: Path) -> None:
        global export_count
        spec = paddle.static.InputSpec(list(input_shape), "float32", input_name)  # (it rewrites the list)
        made = layer if isinstance(layer, paddle.nn.Layer) else layer()
        paddle.jit.save(made, str(tmp / MODEL_STEM), input_spec=[spec])
        export_count += 1

    return build_atomically(target, meta, write)


def random_weights_key(layers: list[paddle.nn.Layer], seed: int) -> str:
    """Cache key of seeded random weights: the seed plus a fingerprint of the first values of every tensor,
    so that a change to the random initialisation does not reuse a stale export."""
    digest = hashlib.sha256()
    for layer in layers:
        for param in layer.state_dict().values():
            digest.update(param.reshape([-1])[:64].numpy().tobytes())
    return f"random-seed{seed}-{digest.hexdigest()[:8]}"


def weights_key(weights: str) -> str:
    """A short, filesystem-safe cache key: the first 16 hex digits of a "sha256:<hex>" digest, or the
    given key (e.g. a random-weights key) made safe."""
    if weights.startswith("sha256:"):
        return weights.removeprefix("sha256:")[:16]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in weights)[:64]


def extractor_engine(
    extractor_layer: paddle.nn.Layer | Callable[[], paddle.nn.Layer],
    digest: str,
    layers: int,
    cache_dir: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    tensorrt: bool = False,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    chunk: int | None = None,
    image_size: int = 224,
    int8_calibration: str | Path | None = None,
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406),
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225),
) -> Engine:
    """The extractor on Paddle Inference, exported to `cache_dir` unless cached (so the layer may be given as a
    function that loads it, called only for an export). `digest` names the weights (a file digest or a
    random-weights key). On CPU it runs in chunks of `chunk` frames (default DEFAULT_CPU_CHUNK; on GPU, whole
    batches): see InferenceEngine. Precision int8 runs instead the extractor's ONNX graph quantised on the
    frames of `int8_calibration` (normalised with `image_mean` / `image_std`) on OpenVINO, cached in the
    same scheme (models/quantise.py)."""
    check_options(device, precision, tensorrt)
    if precision == "int8":
        return _int8_extractor(
            extractor_layer, digest, layers, cache_dir, threads, image_size, int8_calibration, image_mean, image_std
        )
    shape: list[int | None] = [None, 3, image_size, image_size]

    def folded_layer() -> paddle.nn.Layer:  # BatchNorm folded in: see models/resnet.py `folded`
        return folded(extractor_layer if isinstance(extractor_layer, paddle.nn.Layer) else extractor_layer())

    target = export(
        folded_layer,
        cache_entry(cache_dir, weights_key(digest), "extractor", layers),
        shape,
        EXTRACTOR_INPUT,
        {**_meta("extractor", layers, shape), "batch_norm": "folded"},  # an export made before is replaced
    )
    if tensorrt:
        plan = tensorrt_plan(precision, max_batch, image_size)
        gpu = paddle.device.cuda.get_device_name()
        trt_version = ".".join(map(str, paddle.inference.get_trt_runtime_version()))
        target = convert_for_tensorrt(
            target, tensorrt_entry(target, plan, gpu), plan, tensorrt_meta(plan, gpu, trt_version)
        )
    if chunk is None and device == "cpu":
        chunk = DEFAULT_CPU_CHUNK
    return InferenceEngine(
        make_config(target, device, precision, threads, tensorrt),
        (3, image_size, image_size),
        name=f"extractor ({target.name})",
        chunk=chunk,
    )


def _int8_extractor(
    extractor_layer: paddle.nn.Layer | Callable[[], paddle.nn.Layer],
    digest: str,
    layers: int,
    cache_dir: str | Path,
    threads: int | None,
    image_size: int,
    int8_calibration: str | Path | None,
    image_mean: tuple[float, ...],
    image_std: tuple[float, ...],
) -> Engine:
    from models import quantise
    from models.calibration import CalibrationError, load_calibration

    if int8_calibration is None:
        raise EngineOptionsError(
            "precision int8 needs a calibration set (setting int8_calibration): make one with "
            "`videotag calibrate VIDEO...`"
        )
    try:
        calibration = load_calibration(int8_calibration, image_size)
    except CalibrationError as exc:
        raise EngineOptionsError(str(exc)) from exc

    def params() -> dict[str, np.ndarray]:
        made = extractor_layer if isinstance(extractor_layer, paddle.nn.Layer) else extractor_layer()
        return {name: tensor.numpy() for name, tensor in made.original_parameters()}

    target = cache_entry(cache_dir, weights_key(digest), quantise.int8_net(calibration, quantise.RECIPE), layers)
    quantise.build_int8(target, params, layers, calibration, image_mean, image_std, quantise.RECIPE, image_size)
    vnni = sorted(cpu_flags() & set(VNNI_FLAGS))
    log.info(
        "precision int8 on OpenVINO, %s",
        f"VNNI ({', '.join(vnni)})"
        if vnni
        else "no VNNI on this CPU: AVX2 int8 kernels, slower than with VNNI (docs/performance.md)",
    )
    return quantise.OpenVinoEngine(
        target / quantise.MODEL_FILE,
        threads or default_threads(),
        (3, image_size, image_size),
        name=f"extractor ({target.name})",
    )


def inference_engines(
    extractor_layer: paddle.nn.Layer | Callable[[], paddle.nn.Layer],
    predictor_layer: paddle.nn.Layer,
    digest: str,
    seg_num: int,
    layers: int,
    cache_dir: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    tensorrt: bool = False,
    *,
    predictor_backend: str = "dygraph",
    max_batch: int = DEFAULT_MAX_BATCH,
    chunk: int | None = None,
    feature_size: int = 2048,
    image_size: int = 224,
) -> tuple[Engine, Engine]:
    """(extractor, predictor) engines for loaded layers: the extractor as `extractor_engine`.

    The predictor runs eagerly by default (`predictor_backend="dygraph"`): exported, its
    2×seg_num-step unrolled LSTM is thousands of tiny ops that Paddle Inference 3.3 takes ~10 s to export,
    10–40 s to create and 20–80 s to run the first time, and then runs no faster than eager (0.27–0.64 s vs
    0.27 s per video at seg_num 300) — see docs/performance.md. `predictor_backend="inference"` exports it
    anyway, keyed by seg_num. TensorRT and fp16 apply to the extractor only (the predictor stays fp32: it is
    cheap and its recurrence is the precision-sensitive part); bf16 likewise.
    """
    check_options(device, precision, tensorrt)
    if predictor_backend not in ("dygraph", "inference"):
        raise EngineOptionsError(f"predictor_backend must be dygraph or inference, not {predictor_backend!r}")
    extractor = extractor_engine(
        extractor_layer,
        digest,
        layers,
        cache_dir,
        device,
        precision,
        threads,
        tensorrt,
        max_batch=max_batch,
        chunk=chunk,
        image_size=image_size,
    )
    if predictor_backend == "dygraph":
        return extractor, DygraphEngine(predictor_layer)
    shape = [None, seg_num, feature_size]
    target = export(
        predictor_layer,
        cache_entry(cache_dir, weights_key(digest), "predictor", seg_num),
        shape,
        PREDICTOR_INPUT,
        _meta("predictor", seg_num, shape),
    )
    predictor = InferenceEngine(
        make_config(target, device, "fp32", threads), (seg_num, feature_size), name=f"predictor ({target.name})"
    )
    return extractor, predictor
