"""precision int8: the ONNX graph of the extractor, its quantisation, the cache keying, `videotag calibrate`, errors.

Small inputs (ResNet-50 test weights, frames of the sample videos at 224, a few frames), so that it runs on CI's
2 cores; the ResNet-101 agreement table and speed are in docs/performance.md ("INT8").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import paddle
import pytest

from models import inference, quantise
from models.calibration import CalibrationError, CalibrationSet, load_calibration, pick_frames, save_calibration
from models.config import ExtractorConfig
from models.inference import EngineOptionsError, cache_entry, check_options, weights_key
from models.onnx_export import extractor_graph
from models.preprocess import normalise
from models.resnet import tsn_resnet
from models.video import InProcessDecoder
from models.weights import load_into
from tests.model_fixtures import VIDEOS, generated_weights, json_lines, make_clip, run_cli

CFG = ExtractorConfig(layers=50)


@pytest.fixture(scope="module")
def r50() -> paddle.nn.Layer:
    layer = tsn_resnet(50)
    load_into(layer, generated_weights(0, 50) / "tsn.pdparams", "tsn")
    return layer


@pytest.fixture(scope="module")
def params(r50: paddle.nn.Layer) -> dict[str, np.ndarray]:
    return {name: tensor.numpy() for name, tensor in r50.original_parameters()}


def _crops(video: str, seg_num: int) -> np.ndarray:
    decoder = InProcessDecoder("faithful", CFG.short_size, CFG.target_size, 7680, 4320)
    return decoder(VIDEOS / video, seg_num).crops


@pytest.fixture(scope="module")
def calibration() -> CalibrationSet:
    return CalibrationSet(_crops("carphone_pristine.mp4", 8), ("carphone_pristine.mp4",))


@pytest.fixture(scope="module")
def test_frames() -> np.ndarray:
    """Frames of another video than the calibration set's, normalised as the tagger does."""
    return normalise(_crops("bikes.mp4", 4), CFG.image_mean, CFG.image_std)


def _engine(model: onnx.ModelProto | Path, tmp_path: Path) -> quantise.OpenVinoEngine:
    """The shipped runtime for an ONNX model (saved first when given as a graph)."""
    if not isinstance(model, Path):
        onnx.save(model, str(tmp_path / "fp32.onnx"))
        model = tmp_path / "fp32.onnx"
    return quantise.OpenVinoEngine(model, 2, (3, 224, 224))


def _onnxruntime(model: onnx.ModelProto) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"images": batch})[0]


def test_onnx_graph_matches_the_paddle_extractor(
    tmp_path: Path, r50: paddle.nn.Layer, params: dict[str, np.ndarray], test_frames: np.ndarray
) -> None:
    with paddle.no_grad():
        expected = r50(paddle.to_tensor(test_frames)).numpy()
    graph = extractor_graph(params, 50)
    for run in (_onnxruntime(graph), _engine(graph, tmp_path)):  # the quantiser's runtime and the shipped one
        got = run(test_frames)
        assert got.shape == (len(test_frames), 2048)
        assert np.abs(got - expected).max() <= 1e-4


def test_quantised_extractor_agrees_on_frames_outside_the_calibration_set(
    tmp_path: Path, params: dict[str, np.ndarray], calibration: CalibrationSet, test_frames: np.ndarray
) -> None:
    model = extractor_graph(params, 50)
    quantise.quantise(model, calibration, CFG.image_mean, CFG.image_std, tmp_path / "int8.onnx")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantised (QDQ), not the fp32 graph again
    fp32 = _onnxruntime(model)(test_frames)
    int8 = _engine(tmp_path / "int8.onnx", tmp_path)(test_frames)
    # 8-bit activations through ~50 layers: each step rounds to 1/255 of a calibrated range, so the features
    # move by a few percent of their scale (measured: 4.8 %, cosine 0.998 here; ~6 % on ResNet-101, where top-20
    # overlap is 18/20: docs/performance.md). 10 % leaves 2× for other CPUs' kernels; the cosine bound catches
    # features that keep their scale but lose their direction.
    relative = np.abs(int8 - fp32).mean() / np.abs(fp32).mean()
    assert relative < 0.10, relative
    cosine = (int8 * fp32).sum(1) / (np.linalg.norm(int8, axis=1) * np.linalg.norm(fp32, axis=1))
    assert cosine.min() > 0.99, cosine


def test_cache_is_keyed_by_weights_calibration_and_recipe(
    tmp_path: Path, params: dict[str, np.ndarray], calibration: CalibrationSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[Path] = []

    def fake_quantise(
        model: object, calib: CalibrationSet, mean: object, std: object, out: Path, recipe: quantise.Recipe
    ) -> None:
        builds.append(out)
        out.write_bytes(b"model")

    monkeypatch.setattr(quantise, "quantise", fake_quantise)

    def build(calib: CalibrationSet, recipe: quantise.Recipe = quantise.RECIPE, weights: str = "sha256:ab") -> Path:
        target = cache_entry(tmp_path, weights_key(weights), quantise.int8_net(calib, recipe), 50)
        return quantise.build_int8(target, lambda: params, 50, calib, CFG.image_mean, CFG.image_std, recipe)

    first = build(calibration)
    assert build(CalibrationSet(calibration.crops.copy(), ("renamed.mp4",))) == first  # same frames: reused
    assert len(builds) == 1
    other = build(CalibrationSet(calibration.crops[:-1]))
    assert other != first and len(builds) == 2
    assert build(calibration, quantise.Recipe(method="Entropy")) not in (first, other)
    assert build(calibration, weights="sha256:cd") not in (first, other)
    assert len(builds) == 4
    assert not list(tmp_path.glob(".*"))  # no temporary directories left

    (first / quantise.MODEL_FILE).unlink()  # an incomplete entry is built again
    assert build(calibration) == first and len(builds) == 5


def test_a_failed_build_leaves_no_entry(
    tmp_path: Path, params: dict[str, np.ndarray], calibration: CalibrationSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: object) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(quantise, "quantise", failing)
    target = tmp_path / "entry"
    with pytest.raises(RuntimeError):
        quantise.build_int8(target, lambda: params, 50, calibration, CFG.image_mean, CFG.image_std)
    assert list(tmp_path.iterdir()) == []


def test_calibration_set_round_trip_and_bad_files(tmp_path: Path, calibration: CalibrationSet) -> None:
    path = save_calibration(tmp_path / "sub" / "calib.npz", calibration)
    loaded = load_calibration(path, 224)
    assert np.array_equal(loaded.crops, calibration.crops) and loaded.sources == calibration.sources
    assert loaded.digest() == calibration.digest()
    with pytest.raises(CalibrationError, match="videotag calibrate"):
        load_calibration(tmp_path / "missing.npz", 224)
    (tmp_path / "garbage.npz").write_text("not a zip")
    with pytest.raises(CalibrationError, match="not a calibration set"):
        load_calibration(tmp_path / "garbage.npz", 224)
    np.savez(tmp_path / "floats.npz", crops=np.zeros((2, 224, 224, 3), np.float32))
    with pytest.raises(CalibrationError, match="uint8"):
        load_calibration(tmp_path / "floats.npz", 224)
    with pytest.raises(CalibrationError, match="uint8"):
        load_calibration(path, 256)  # made for another crop size


def test_frames_are_shared_among_the_videos() -> None:
    videos = [np.full((10, 1, 1, 3), i, np.uint8) for i in range(3)]
    picked = pick_frames(videos, 7)
    assert [int(v) for v in picked[:, 0, 0, 0]] == [0, 0, 0, 1, 1, 2, 2]
    assert len(pick_frames(videos, 2)) == 2
    assert len(pick_frames([videos[0][:2]], 64)) == 2  # fewer frames than asked: all of them
    with pytest.raises(CalibrationError):
        pick_frames([], 4)


def test_check_options_for_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    check_options("cpu", "int8")
    with pytest.raises(EngineOptionsError, match="CPU"):
        check_options("gpu", "int8")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name))
    with pytest.raises(EngineOptionsError, match=r"onnxruntime.*videotag\[int8\]"):
        check_options("cpu", "int8")


def test_int8_without_a_calibration_set_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(EngineOptionsError, match="videotag calibrate"):
        inference.extractor_engine(
            tsn_resnet(50), "random", 50, tmp_path, precision="int8", int8_calibration=tmp_path / "none.npz"
        )


def test_calibrate_then_tag_with_int8(tmp_path: Path) -> None:
    video = make_clip(tmp_path / "clip.mp4", 12)
    calib = tmp_path / "calib.npz"
    done = run_cli(
        "calibrate",
        str(video),
        str(VIDEOS / "carphone_pristine.mp4"),
        "--out",
        str(calib),
        "--frames",
        "6",
        "--seg-num",
        "6",
    )
    assert done.returncode == 0, done.stderr
    loaded = load_calibration(calib, 224)
    assert len(loaded.crops) == 6 and loaded.sources == ("clip.mp4", "carphone_pristine.mp4")

    weights = generated_weights(0, 50)
    tagged = run_cli(
        "tag",
        str(VIDEOS / "bikes.mp4"),
        "--precision",
        "int8",
        "--int8-calibration",
        str(calib),
        "--layers",
        "50",
        "--seg-num",
        "4",
        "--extractor-weights",
        str(weights),
        "--predictor-weights",
        str(weights),
        "--label-file",
        str(VIDEOS.parent / "label_3396.txt"),
        "--model-cache-dir",
        str(tmp_path / "models"),
        "--quiet",
    )
    assert tagged.returncode == 0, tagged.stderr
    assert len(json_lines(tagged.stdout)[0]["tags"]) == 20
    assert "precision int8 on OpenVINO" in tagged.stderr  # the int8 engine ran, not Paddle's
    assert list((tmp_path / "models").glob("*-extractor-int8-*-50/model.onnx"))


def test_calibrate_reports_a_bad_video(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 1000)
    done = run_cli("calibrate", str(bad), "--out", str(tmp_path / "c.npz"))
    assert done.returncode == 1 and "videotag calibrate:" in done.stderr
    assert not (tmp_path / "c.npz").exists()
