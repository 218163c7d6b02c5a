"""Paddle Inference engines: fidelity against dygraph, the export cache, threads, and the Config choices.

The fidelity tests use generated ResNet-50 weights (`make_weights.py --layers 50`: the same code path as 101,
half the export and run time) on real frames of a sample video.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import paddle
import pytest

from models import inference
from models import tagger as tagger_module
from models.config import ExtractorConfig
from models.errors import ConfigError
from models.heads import HeadSpec
from models.inference import (
    EngineOptionsError,
    InferenceEngine,
    cache_entry,
    check_options,
    config_plan,
    cpu_flags,
    inference_engines,
    make_config,
    weights_key,
)
from models.resnet import ConvBN, folded
from models.tagger import VideoTagger, build_tagger
from tests.model_fixtures import LABELS, TOLERANCE_FEATURES, VIDEOS, generated_weights, require_shared

SEG_NUM = 4
PrecisionType = paddle.inference.PrecisionType


@pytest.fixture(scope="module")
def r50_weights() -> Path:
    return generated_weights(0, 50)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


def _build(weights: Path, cache: Path, engine: str, heads: list[HeadSpec] | None = None) -> VideoTagger:
    return build_tagger(
        weights / "tsn",
        weights / "attention_lstm",
        LABELS,
        ExtractorConfig(layers=50, seg_num=SEG_NUM),
        engine=engine,
        cache_dir=cache,
        heads=heads,
    )


@pytest.fixture(scope="module")
def dygraph(r50_weights: Path) -> VideoTagger:
    return _build(r50_weights, Path("unused"), "dygraph")


@pytest.fixture(scope="module")
def engine_tagger(r50_weights: Path, cache_dir: Path) -> VideoTagger:
    return _build(r50_weights, cache_dir, "inference")


@pytest.fixture(scope="module")
def frames(dygraph: VideoTagger) -> np.ndarray:
    """Normalised real frames of a sample video: the extractor's input."""
    require_shared()
    video = dygraph.sample(VIDEOS / "bikes.mp4", 6)
    cfg = dygraph.extractor_config
    from models.preprocess import normalise

    return normalise(video.crops, cfg.image_mean, cfg.image_std)


# ---------------------------------------------------------------------------------------------- fidelity


@pytest.mark.slow
def test_fp32_features_match_dygraph(dygraph: VideoTagger, engine_tagger: VideoTagger, frames: np.ndarray) -> None:
    assert engine_tagger.info["engine"] == "inference" and engine_tagger.info["precision"] == "fp32"
    assert isinstance(engine_tagger.extractor, InferenceEngine)
    ours, reference = engine_tagger.extractor(frames), dygraph.extractor(frames)
    assert ours.shape == reference.shape == (len(frames), 2048)
    assert np.abs(ours - reference).max() <= TOLERANCE_FEATURES
    # Batch composition does not change a frame's features beyond the tolerance either.
    assert np.abs(engine_tagger.extractor(frames[:1]) - reference[:1]).max() <= TOLERANCE_FEATURES


@pytest.mark.slow
def test_fp32_tags_match_dygraph(dygraph: VideoTagger, engine_tagger: VideoTagger) -> None:
    ours, reference = engine_tagger.tag(VIDEOS / "carphone_pristine.mp4"), dygraph.tag(VIDEOS / "carphone_pristine.mp4")
    assert np.abs(ours.features - reference.features).max() <= TOLERANCE_FEATURES
    assert [t["class_id"] for t in ours.tags] == [t["class_id"] for t in reference.tags]


@pytest.mark.slow
def test_exported_predictor_matches_dygraph(dygraph: VideoTagger, cache_dir: Path) -> None:
    _, predictor = inference_engines(
        dygraph.extractor.layer,
        dygraph.heads[0].predictor.layer,
        dygraph.info["weights"],
        SEG_NUM,
        50,
        cache_dir,
        predictor_backend="inference",
    )
    features = np.random.default_rng(0).standard_normal((2, SEG_NUM, 2048)).astype(np.float32)
    assert np.abs(predictor(features) - dygraph.heads[0].predictor(features)).max() <= 1e-5
    with pytest.raises(ValueError, match="exported for input"):
        predictor(features[:, :2])
    assert cache_entry(cache_dir, weights_key(dygraph.info["weights"]), "predictor", SEG_NUM).is_dir()


@pytest.mark.slow
def test_fixed_size_chunks(engine_tagger: VideoTagger, frames: np.ndarray) -> None:
    """On CPU every run has `chunk` rows (one input shape, bounded oneDNN caches); padding changes nothing."""
    engine = engine_tagger.extractor
    assert isinstance(engine, InferenceEngine) and engine.chunk == inference.DEFAULT_CPU_CHUNK == 8
    many = np.concatenate([frames, frames, frames[:5]])  # 17 rows: runs of 8, 8, 1 + 7 padding
    calls = engine.calls
    out = engine(many)
    assert engine.calls == calls + 3 and out.shape == (17, 2048)
    single = engine(frames[2:3])
    assert np.abs(out[2] - single[0]).max() <= 1e-5 and np.abs(out[16] - out[4]).max() <= 1e-5


@pytest.mark.slow
def test_called_from_another_thread(engine_tagger: VideoTagger, frames: np.ndarray) -> None:
    """ModelThread calls the engine from its own thread, not the one that created the predictor."""
    expected = engine_tagger.extractor(frames[:2])
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            for _ in range(2):
                results.append(engine_tagger.extractor(frames[:2]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]  # two foreign threads, concurrently
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 4
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_folding_a_batch_norm_into_its_conv_keeps_the_outputs_and_leaves_the_model_alone() -> None:
    rng = np.random.default_rng(3)
    model = ConvBN("res2a_branch2b", 4, 6, 3, stride=2)
    assert model.bn is not None
    model.bn._mean.set_value(rng.standard_normal(6).astype(np.float32))
    model.bn._variance.set_value(rng.uniform(0.1, 2.0, 6).astype(np.float32))
    model.bn.weight.set_value(rng.standard_normal(6).astype(np.float32))
    model.bn.bias.set_value(rng.standard_normal(6).astype(np.float32))
    model.eval()
    x = paddle.to_tensor(rng.standard_normal((2, 4, 9, 9)).astype(np.float32))
    copy = folded(model)
    assert copy.bn is None and copy.conv.bias is not None
    assert model.bn is not None and model.conv.bias is None, "the original was changed"
    np.testing.assert_allclose(copy(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="folded"):
        list(copy.original_parameters())


@pytest.mark.slow
def test_the_extractor_is_exported_folded_and_computes_what_paddles_own_folding_did(
    dygraph: VideoTagger, engine_tagger: VideoTagger, frames: np.ndarray, cache_dir: Path, tmp_path: Path
) -> None:
    """No BatchNorm is left for the predictor to fold at start-up, and the numbers are bit for bit those of an
    export of the unfolded network, which Paddle Inference folds itself."""
    key = weights_key(engine_tagger.info["extractor_weights"])
    entry = cache_entry(cache_dir, key, "extractor", 50)
    program, _ = inference.model_files(entry)
    assert "batch_norm" not in program.read_text(encoding="utf-8")
    assert json.loads((entry / inference.META_FILE).read_text(encoding="utf-8"))["batch_norm"] == "folded"
    shape: list[int | None] = [None, 3, 224, 224]
    unfolded = inference.export(
        dygraph.extractor.layer, tmp_path / "unfolded", shape, "images", inference._meta("extractor", 50, shape)
    )
    assert "batch_norm" in inference.model_files(unfolded)[0].read_text(encoding="utf-8")
    theirs = InferenceEngine(make_config(unfolded), chunk=inference.DEFAULT_CPU_CHUNK)
    np.testing.assert_array_equal(engine_tagger.extractor(frames), theirs(frames))


# ---------------------------------------------------------------------------------------------- export cache


@pytest.mark.slow
def test_export_cache_is_reused(
    r50_weights: Path, cache_dir: Path, engine_tagger: VideoTagger, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = weights_key(engine_tagger.info["extractor_weights"])
    entry = cache_entry(cache_dir, key, "extractor", 50)
    program, params = inference.model_files(entry)
    stamps = (program.stat().st_mtime_ns, params.stat().st_mtime_ns)
    count = inference.export_count
    loaded: list[str] = []
    load_into = tagger_module.load_into
    monkeypatch.setattr(
        tagger_module,
        "load_into",
        lambda model, location, stem: loaded.append(stem) or load_into(model, location, stem),
    )
    # A second head changes the chain's weights but not the extractor's: its export is reused.
    again = _build(
        r50_weights,
        cache_dir,
        "inference",
        [HeadSpec("videotag"), HeadSpec("second", weights=str(r50_weights / "attention_lstm"))],
    )
    assert inference.export_count == count, "the second build exported again"
    assert loaded == [], "the extractor's weights were loaded though its export is cached"
    assert again.info["extractor_weights"] == engine_tagger.info["extractor_weights"]
    assert again.info["weights"] != engine_tagger.info["weights"]
    assert (program.stat().st_mtime_ns, params.stat().st_mtime_ns) == stamps
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")], "a temporary export was left behind"
    assert again.info["engine"] == "inference"


@pytest.mark.slow
def test_stale_export_is_replaced(dygraph: VideoTagger, tmp_path: Path) -> None:
    layer = dygraph.heads[0].predictor.layer
    shape: list[int | None] = [None, SEG_NUM, 2048]
    meta = inference._meta("predictor", SEG_NUM, shape)
    target = tmp_path / "k-predictor-4"
    inference.export(layer, target, shape, "features", meta)
    (target / inference.META_FILE).write_text(json.dumps({**meta, "paddle": "0.0"}), encoding="utf-8")
    count = inference.export_count
    inference.export(layer, target, shape, "features", meta)
    assert inference.export_count == count + 1
    assert json.loads((target / inference.META_FILE).read_text(encoding="utf-8")) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k-predictor-4"]


def test_weights_key() -> None:
    assert weights_key("sha256:" + "ab" * 32) == "ab" * 8
    assert weights_key("random-seed0-1234abcd") == "random-seed0-1234abcd"
    assert "/" not in weights_key("a/b:c")


# ---------------------------------------------------------------------------------------------- Config choices


def _methods(plan: list[tuple[str, tuple]]) -> dict[str, tuple]:
    return dict(plan)


def test_cpu_fp32_plan() -> None:
    plan = _methods(config_plan("cpu", "fp32", threads=3))
    assert "enable_mkldnn" in plan and plan["set_cpu_math_library_num_threads"] == (3,)
    assert "enable_mkldnn_bfloat16" not in plan
    assert not {"enable_use_gpu", "enable_tensorrt_engine"} & set(plan)


def test_cpu_threads_default_to_the_cgroup_plan() -> None:
    from models import cgroup

    expected = cgroup.plan_threads(0, cgroup.cpu_quota(), cgroup.affinity_cpus()).threads
    assert _methods(config_plan("cpu"))["set_cpu_math_library_num_threads"] == (expected,)


def test_cpu_bf16_plan() -> None:
    plan = _methods(config_plan("cpu", "bf16", threads=2))
    assert "enable_mkldnn" in plan and "enable_mkldnn_bfloat16" in plan


def test_gpu_plans() -> None:
    plain = _methods(config_plan("gpu", "fp32", gpu_memory_mb=512, device_id=1))
    assert plain["enable_use_gpu"] == (512, 1, PrecisionType.Float32)
    assert not {"enable_mkldnn", "enable_tensorrt_engine"} & set(plain)

    mixed = _methods(config_plan("gpu", "fp16"))
    assert mixed["enable_use_gpu"][2] == PrecisionType.Half and "enable_tensorrt_engine" not in mixed

    # Paddle 3's PIR route: the program is converted beforehand; the predictor only runs it on the GPU.
    for precision in ("fp32", "fp16"):
        trt = _methods(config_plan("gpu", precision, tensorrt=True))
        assert trt["enable_use_gpu"][2] == PrecisionType.Float32  # the converted engines hold their precision
        assert "enable_tensorrt_engine" not in trt  # (the legacy subgraph route, for pre-PIR programs)


def test_gpu_fp32_turns_tf32_off_before_cuda_and_fp16_leaves_it() -> None:
    assert inference.gpu_precision_plan("gpu", "fp32") == (
        {"NVIDIA_TF32_OVERRIDE": "0"},
        {"set_cublas_switch": False, "set_cudnn_switch": False},
    )
    assert inference.gpu_precision_plan("gpu", "fp16") == ({}, {})
    assert inference.gpu_precision_plan("cpu", "fp32") == ({}, {})

    class Core:
        def __init__(self) -> None:
            self.calls: list[tuple[str, bool]] = []

        def set_cublas_switch(self, on: bool) -> None:
            self.calls.append(("cublas", on))

        def set_cudnn_switch(self, on: bool) -> None:
            self.calls.append(("cudnn", on))

    env: dict[str, str] = {"NVIDIA_TF32_OVERRIDE": "1"}
    core = Core()
    done = inference.set_up_gpu_precision("gpu", "fp32", env, core)
    assert env["NVIDIA_TF32_OVERRIDE"] == "0" and core.calls == [("cublas", False), ("cudnn", False)]
    assert len(done) == 3
    env = {}
    assert inference.set_up_gpu_precision("gpu", "fp16", env, Core()) == [] and env == {}


def test_tensorrt_plan_and_cache_entry(tmp_path: Path) -> None:
    plan = inference.tensorrt_plan("fp16", 64)
    assert (plan["min"], plan["opt"], plan["max"]) == ([1, 3, 224, 224], [64, 3, 224, 224], [64, 3, 224, 224])
    assert plan["precision"] == "FP16" and plan["input"] == inference.EXTRACTOR_INPUT
    assert inference.tensorrt_plan("fp32", 8)["precision"] == "FP32"
    export_dir = tmp_path / "0123456789abcdef-extractor-101"
    entry = inference.tensorrt_entry(export_dir, plan, "NVIDIA H100 80GB HBM3")
    assert entry == export_dir / "trt-fp16-b64-NVIDIA_H100_80GB_HBM3"  # beside the export, keyed like it
    assert inference.tensorrt_entry(export_dir, inference.tensorrt_plan("fp32", 64), "x") != inference.tensorrt_entry(
        export_dir, plan, "x"
    )
    meta = inference.tensorrt_meta(plan, "NVIDIA H100", "10.5.0")
    assert meta["gpu"] == "NVIDIA H100" and meta["tensorrt"] == "10.5.0" and meta["paddle"] == paddle.__version__


def test_tensorrt_conversion_is_built_once_and_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a fake `paddle.tensorrt.export` (the CPU wheel has none): the converter gets the plan's shapes and
    precision and a save prefix inside a temporary directory; a second build reuses the result."""
    import sys
    import types

    calls: list[tuple[str, object]] = []

    class Input:
        def __init__(self, **kwargs: object) -> None:
            self.kwargs = kwargs

    class TensorRTConfig:
        def __init__(self, inputs: list, save_model_dir: str, precision_mode: str, workspace_size: int) -> None:
            self.inputs, self.save_model_dir, self.precision_mode = inputs, save_model_dir, precision_mode

    def convert(model_path: str, config: TensorRTConfig) -> None:
        calls.append((model_path, config))
        Path(config.save_model_dir + ".json").write_text("{}")
        Path(config.save_model_dir + ".pdiparams").write_bytes(b"")

    fake = types.ModuleType("paddle.tensorrt.export")
    fake.Input, fake.TensorRTConfig, fake.convert = Input, TensorRTConfig, convert  # type: ignore[attr-defined]
    fake.PrecisionMode = {"FP16": "fp16-mode", "FP32": "fp32-mode"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "paddle.tensorrt", types.ModuleType("paddle.tensorrt"))
    monkeypatch.setitem(sys.modules, "paddle.tensorrt.export", fake)

    export_dir = tmp_path / "key-extractor-50"
    plan = inference.tensorrt_plan("fp16", 32)
    target = inference.tensorrt_entry(export_dir, plan, "gpu")
    meta = inference.tensorrt_meta(plan, "gpu", "10.0")
    assert inference.convert_for_tensorrt(export_dir, target, plan, meta) == target
    assert inference.convert_for_tensorrt(export_dir, target, plan, meta) == target
    assert len(calls) == 1, "the second build converted again"
    model_path, config = calls[0]
    assert model_path == str(export_dir / "model") and config.precision_mode == "fp16-mode"
    assert config.inputs[0].kwargs == {
        "min_input_shape": (1, 3, 224, 224),
        "optim_input_shape": (32, 3, 224, 224),
        "max_input_shape": (32, 3, 224, 224),
        "name": "images",
    }
    assert Path(config.save_model_dir).parent != target  # written elsewhere, renamed into place
    assert inference.model_files(target)[0].name == "model.json"
    assert json.loads((target / inference.META_FILE).read_text()) == meta
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no temporary directory left behind


def test_tensorrt_is_refused_without_a_tensorrt_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.inference, "get_trt_compile_version", lambda: (0, 0, 0))
    with pytest.raises(EngineOptionsError, match="build with TensorRT"):
        check_options("gpu", "fp16", tensorrt=True)
    check_options("gpu", "fp16")  # plain CUDA is fine
    # A TensorRT build without NVIDIA's `tensorrt` package: the PIR converter could not be imported.
    monkeypatch.setattr(paddle.inference, "get_trt_compile_version", lambda: (10, 5, 0))
    monkeypatch.setattr(inference.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EngineOptionsError, match="`tensorrt` Python package"):
        check_options("gpu", "fp16", tensorrt=True)


@pytest.mark.slow
def test_cpu_config_object(engine_tagger: VideoTagger, cache_dir: Path) -> None:
    entry = cache_entry(cache_dir, weights_key(engine_tagger.info["extractor_weights"]), "extractor", 50)
    config = make_config(entry, "cpu", "fp32", threads=3)
    assert config.mkldnn_enabled() and not config.use_gpu() and not config.tensorrt_engine_enabled()
    assert config.cpu_math_library_num_threads() == 3
    if inference.cpu_supports_bf16():
        assert make_config(entry, "cpu", "bf16", threads=1).mkldnn_enabled()


def test_cpu_flags_parsing(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert {"avx512_bf16", "avx512f", "fpu"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "absent") == set()


def test_bf16_refused_without_cpu_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "cpu_flags", lambda *a: {"avx2", "avx512f"})
    with pytest.raises(EngineOptionsError, match=r"bf16 needs a CPU .*avx512_bf16 or amx_bf16.*use precision fp32"):
        check_options("cpu", "bf16")
    # The factory checks before exporting anything (no layers needed to get the error).
    with pytest.raises(EngineOptionsError, match="bf16"):
        inference_engines(None, None, "sha256:00", 4, 50, "/nonexistent", "cpu", "bf16")  # type: ignore[arg-type]
    monkeypatch.setattr(inference, "cpu_flags", lambda *a: {"amx_bf16"})
    check_options("cpu", "bf16")


def test_impossible_combinations() -> None:
    with pytest.raises(EngineOptionsError, match="device"):
        check_options("tpu", "fp32")
    with pytest.raises(EngineOptionsError, match="precision"):
        check_options("cpu", "int4")
    with pytest.raises(EngineOptionsError, match="TensorRT needs device gpu"):
        check_options("cpu", "fp32", tensorrt=True)
    with pytest.raises(EngineOptionsError, match="fp16 is for GPUs"):
        check_options("cpu", "fp16")
    with pytest.raises(EngineOptionsError, match="bf16 is the CPU"):
        check_options("gpu", "bf16")
    if not paddle.is_compiled_with_cuda():
        with pytest.raises(EngineOptionsError, match="CUDA build"):
            check_options("gpu", "fp32")


def test_build_tagger_rejects_bad_engine_options() -> None:
    with pytest.raises(ConfigError, match="needs engine inference"):
        build_tagger("w/tsn", "w/attention_lstm", LABELS, engine="dygraph", precision="bf16")
    with pytest.raises(ConfigError, match="engine must be"):
        build_tagger("w/tsn", "w/attention_lstm", LABELS, engine="onnx")
