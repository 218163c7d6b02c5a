"""Loading the VideoTag chain: the extractor and the heads with their weights, labels and tag control.

One extractor feeds any number of heads (AttentionLSTM predictors with their own labels and tag control,
models/heads.py); `build_tagger` is the one place the networks are loaded into a `VideoTagger`
(models/chain.py, re-exported here). Invariant: a head's class count is read from its weight file (its label
file must match it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import paddle

from models import cgroup, load_cache
from models.attention_lstm import AttentionLSTM, attention_lstm
from models.chain import RANDOM_WEIGHTS, Head, TagResult, VideoTagger
from models.config import TSN_FILE, ExtractorConfig, PredictorConfig, config_value
from models.engines import DygraphEngine, Engine, SimulatedEngine
from models.errors import ConfigError
from models.heads import DEFAULT_HEAD, HeadSpec, check_heads, load_control
from models.labels import load_labels
from models.options import ENGINES
from models.resnet import tsn_resnet
from models.weights import assign, find_params, load_into, no_random_init, randomize

__all__ = [
    "ENGINES",
    "RANDOM_SEED",
    "RANDOM_WEIGHTS",
    "Head",
    "TagResult",
    "VideoTagger",
    "build_tagger",
    "load_predictor",
    "set_device",
]
RANDOM_SEED = 0


def set_device(device: str, precision: str = "fp32") -> None:
    """Select the device; on a GPU, first set up `precision` (TF32 off for fp32: before CUDA is used)."""
    if device == "gpu":
        if not paddle.device.is_compiled_with_cuda():
            raise RuntimeError("--device gpu needs a CUDA build of paddlepaddle (paddlepaddle-gpu)")
        from models.inference import set_up_gpu_precision

        set_up_gpu_precision(device, precision)
    paddle.set_device(device)


def load_predictor(
    location: str | Path, pcfg: PredictorConfig, cache_dir: Path | None = None
) -> tuple[AttentionLSTM, Path]:
    """An AttentionLSTM with as many classes as the weight file's output layer, loaded strictly; and the file.
    With `cache_dir`, its tensors come from there after the first load (models/load_cache.py)."""
    state, from_opt, params_path = load_cache.state(location, "attention_lstm", cache_dir)
    output = state.get("output.w_0")
    # A file without a usable output layer gets the default count: the strict check then names the problem.
    classes = output.shape[1] if output is not None and output.ndim == 2 else pcfg.num_classes
    with no_random_init():  # every parameter is assigned from the file below
        model = attention_lstm(pcfg.feature_size, pcfg.embedding_size, pcfg.lstm_size, classes, pcfg.dropout_rate)
    assign(model, state, str(params_path), optional=from_opt)
    return model, params_path


def _load_head(
    spec: HeadSpec,
    predictor_weights: str | Path,
    label_file: str | Path,
    pcfg: PredictorConfig,
    allow_random_weights: bool,
    digest: Callable[[Path], str],
    cache_dir: Path | None,
) -> tuple[Head, Path | None]:
    """(the head, its weight file: None when random). A head with weights of its own always loads them; one on
    the default weights is random in a demo. `digest` names a weight file ("sha256:..."); `cache_dir`: as
    `load_predictor`'s."""
    label_path = Path(spec.labels or label_file)
    params_path: Path | None = None
    if allow_random_weights and spec.weights is None:
        layer = attention_lstm(
            pcfg.feature_size, pcfg.embedding_size, pcfg.lstm_size, pcfg.num_classes, pcfg.dropout_rate
        )
        randomize(layer, RANDOM_SEED + 1)
        if label_path.is_file():
            labels = load_labels(label_path, pcfg.num_classes)
        else:  # a demo on a machine with nothing downloaded
            labels = [f"untrained-tag-{i}" for i in range(pcfg.num_classes)]
    else:
        layer, params_path = load_predictor(spec.weights or predictor_weights, pcfg, cache_dir)
        labels = load_labels(label_path, layer.output.weight.shape[1])
    weights = digest(params_path) if params_path else RANDOM_WEIGHTS
    head = Head(spec.name, DygraphEngine(layer), labels, load_control(spec, labels), spec.topk or pcfg.topk, weights)
    return head, params_path


def build_tagger(
    extractor_weights: str | Path,
    predictor_weights: str | Path,
    label_file: str | Path,
    extractor_config: ExtractorConfig | None = None,
    predictor_config: PredictorConfig | None = None,
    *,
    heads: Sequence[HeadSpec] | None = None,
    device: str = "cpu",
    allow_random_weights: bool = False,
    preprocess: str = "faithful",
    batch_size: int | None = None,
    max_width: int | None = None,
    max_height: int | None = None,
    engine: str = "dygraph",
    precision: str = "fp32",
    cache_dir: str | Path = ".cache/videotag/models",
    threads: int | None = None,
    tensorrt: bool = False,
    simulated_ms_per_frame: float = 0.0,
    int8_calibration: str | Path | None = None,
) -> VideoTagger:
    """Load the extractor and the heads with their weights (or seeded random ones, for demos only).

    `heads` default to one, `HeadSpec("videotag")`: `predictor_weights` with `label_file`, which are also what
    a spec without weights or labels uses; `()` builds an extractor only. `allow_random_weights` makes the
    extractor and the heads on the default weights random; a head with weights of its own loads them.
    `engine` "dygraph" runs eager Paddle (fp32 only); "inference" exports the extractor to `cache_dir` and runs
    it on Paddle Inference (see models/inference.py) with `precision` fp32 or bf16 (CPU), fp16 (GPU), or int8
    (CPU: its ONNX graph quantised on the frames of `int8_calibration`, on ONNX Runtime: models/quantise.py), on
    `threads` CPU math threads (default: from the cgroup CPU quota, models/cgroup.py), `tensorrt` on GPU. Heads
    always run eagerly (see `inference_engines` for why). "simulated" loads no extractor: a stand-in that sleeps
    `simulated_ms_per_frame` per frame and returns zero features, and heads that return zero probabilities
    (no sleep: the LSTM is a few percent of a video's model time), for measuring the host side alone.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "dygraph" and precision != "fp32":
        raise ConfigError(f"precision {precision} needs engine inference (dygraph runs fp32 only)")
    specs = list(heads) if heads is not None else [HeadSpec(DEFAULT_HEAD)]
    check_heads(specs)
    ecfg = extractor_config or ExtractorConfig()
    # unset: configs/tsn.yaml's (models/config.py)
    batch_size = config_value(TSN_FILE, "batch_size") if batch_size is None else batch_size
    max_width = config_value(TSN_FILE, "max_width") if max_width is None else max_width
    max_height = config_value(TSN_FILE, "max_height") if max_height is None else max_height
    pcfg = predictor_config or PredictorConfig()
    set_device(device, precision)
    if device == "cpu" and engine == "inference":  # (eager Paddle runs its math on one thread by default)
        threads = cgroup.thread_plan(threads or 0).threads  # decided and logged once per process
    # Looked for before the heads load: on a fresh checkout the first error names the first file to get.
    extractor_file = None if allow_random_weights or engine == "simulated" else find_params(extractor_weights, "tsn")
    head_files = [
        find_params(spec.weights or predictor_weights, "attention_lstm")
        for spec in specs
        if spec.weights is not None or not allow_random_weights
    ]
    # What loading derives from the weight files is cached beside the exports (models/load_cache.py).
    derived = Path(cache_dir) if engine == "inference" else None
    with ThreadPoolExecutor(1, thread_name_prefix="weights-digest") as hasher:
        # ~0.5 GB of weight files hashed on another core while the heads load (hashlib releases the GIL)
        paths = [path for path in (extractor_file, *head_files) if path is not None]
        digests = hasher.submit(load_cache.digests, paths, derived)

        def digest(path: Path) -> str:
            return "sha256:" + digests.result()[1][path]

        loaded = [
            _load_head(spec, predictor_weights, label_file, pcfg, allow_random_weights, digest, derived)
            for spec in specs
        ]
        whole = "sha256:" + digests.result()[0]
    built = tuple(head for head, _ in loaded)
    extractor: Callable[[], paddle.nn.Layer]
    if extractor_file is None:
        weights = extractor_digest = RANDOM_WEIGHTS

        @functools.cache
        def extractor() -> paddle.nn.Layer:  # built when first needed (never for the simulated engine)
            layer = tsn_resnet(ecfg.layers)
            randomize(layer, RANDOM_SEED)
            return layer
    else:
        source = extractor_file
        # `weights` names the whole chain in results; the extractor's own digest names its features
        # (`videotag features`, the training cache) and keys its export, which no head changes.
        weights = whole
        extractor_digest = digest(source)

        def extractor() -> paddle.nn.Layer:  # not needed at all when its export is cached (~2 s of a start)
            with no_random_init():  # every parameter is assigned from the file below
                layer = tsn_resnet(ecfg.layers)
            load_into(layer, source, "tsn")
            return layer

    info = {
        "extractor": f"TSN-ResNet{ecfg.layers}",
        "predictor": "AttentionLSTM",
        "seg_num": ecfg.seg_num,
        "weights": weights,
        "extractor_weights": extractor_digest,
        "heads": {head.name: {"classes": len(head.labels), "weights": head.weights} for head in built},
        "preprocess": preprocess,
        "engine": engine,
        "precision": precision,
        "paddle": paddle.__version__,
    }
    extractor_engine: Engine
    if engine == "simulated":
        info["simulated_ms_per_frame"] = simulated_ms_per_frame
        size = ecfg.target_size
        extractor_engine = SimulatedEngine(
            simulated_ms_per_frame, (pcfg.feature_size,), (3, size, size), "simulated extractor"
        )
        built = tuple(
            replace(
                head,
                predictor=SimulatedEngine(
                    0.0, (len(head.labels),), (ecfg.seg_num, pcfg.feature_size), f"simulated head {head.name}"
                ),
            )
            for head in built
        )
    elif engine == "inference":
        from models.inference import extractor_engine as exported_extractor
        from models.inference import random_weights_key

        key = random_weights_key([extractor()], RANDOM_SEED) if allow_random_weights else extractor_digest
        extractor_engine = exported_extractor(
            extractor,
            key,
            ecfg.layers,
            cache_dir,
            device,
            precision,
            threads,
            tensorrt,
            max_batch=batch_size,
            image_size=ecfg.target_size,
            int8_calibration=int8_calibration,
            image_mean=ecfg.image_mean,
            image_std=ecfg.image_std,
        )
    else:
        extractor_engine = DygraphEngine(extractor())
    return VideoTagger(
        ecfg,
        extractor_engine,
        built,
        preprocess=preprocess,
        batch_size=batch_size,
        max_width=max_width,
        max_height=max_height,
        info=info,
    )
