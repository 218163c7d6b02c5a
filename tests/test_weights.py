"""The strict loader of the original `fluid.save` files (spec §5), and the network configs."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import paddle
import pytest

from models.config import CONFIG_DIR_ENV, ExtractorConfig, PredictorConfig
from models.errors import ConfigError
from models.resnet import tsn_resnet
from models.weights import HOW_TO_GET, WeightsError, expected_shapes, file_digests, find_params, load_into
from tests.model_fixtures import generated_weights, require_shared

ROOT = Path(__file__).resolve().parents[1]

# A small network with original-style names: the loader only relies on `original_parameters()`.
TINY_SHAPES = {
    "conv1_weights": (4, 3, 3, 3),
    "bn_conv1_scale": (4,),
    "bn_conv1_offset": (4,),
    "bn_conv1_mean": (4,),
    "bn_conv1_variance": (4,),
    "rgb_fc.w_0": (4, 6),
    "rgb_fc.b_0": (6,),
}


class Tiny(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.tensors = {
            name: self.create_parameter(list(shape), default_initializer=paddle.nn.initializer.Constant(0.0))
            for name, shape in TINY_SHAPES.items()
        }

    def original_parameters(self):
        yield from self.tensors.items()


def tiny_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in TINY_SHAPES.items()}


def dump(path: Path, state: dict, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(state, f, protocol=protocol)
    return path


def assert_loaded(model: Tiny, state: dict[str, np.ndarray]) -> None:
    for name, tensor in model.original_parameters():
        np.testing.assert_array_equal(tensor.numpy(), state[name], err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Locations


@pytest.mark.parametrize("form", ["prefix", "pdparams", "directory", "nested directory"])
def test_loader_accepts_prefix_file_and_directory(tmp_path: Path, form: str) -> None:
    state = tiny_state()
    folder = tmp_path / "w" / ("inner" if form == "nested directory" else "")
    params = dump(folder / "tsn.pdparams", state)
    dump(folder / "attention_lstm.pdparams", tiny_state(1))  # another stem alongside: must not be picked
    location = {"prefix": folder / "tsn", "pdparams": params, "directory": folder, "nested directory": tmp_path / "w"}[
        form
    ]
    model = Tiny()
    assert load_into(model, location, "tsn") == params
    assert_loaded(model, state)
    assert find_params(location, "tsn") == params


def test_missing_file_says_how_to_get_weights(tmp_path: Path) -> None:
    for location in (tmp_path / "weights" / "tsn", tmp_path / "tsn.pdparams", tmp_path):
        with pytest.raises(WeightsError) as info:
            load_into(Tiny(), location, "tsn")
        assert "videotag weights download" in str(info.value)
    assert "videotag weights download" in HOW_TO_GET


# ---------------------------------------------------------------------------------------------------------------
# Contents


def test_pdopt_fills_what_pdparams_lacks(tmp_path: Path) -> None:
    state = tiny_state()
    params = {k: v for k, v in state.items() if k not in ("bn_conv1_mean", "bn_conv1_variance")}
    params["conv1_weights"] = state["conv1_weights"]
    optimizer = {
        "bn_conv1_mean": state["bn_conv1_mean"],
        "bn_conv1_variance": state["bn_conv1_variance"],
        "conv1_weights": np.full(TINY_SHAPES["conv1_weights"], 99.0, np.float32),  # .pdparams wins
        "conv1_weights_velocity_0": np.zeros(TINY_SHAPES["conv1_weights"], np.float32),  # optimizer state
        "learning_rate_0": np.array([0.001], np.float32),
    }
    dump(tmp_path / "tsn.pdparams", params)
    dump(tmp_path / "tsn.pdopt", optimizer)
    model = Tiny()
    load_into(model, tmp_path / "tsn", "tsn")
    assert_loaded(model, state)


def test_missing_tensor_without_pdopt_is_an_error(tmp_path: Path) -> None:
    state = tiny_state()
    del state["bn_conv1_mean"]
    dump(tmp_path / "tsn.pdparams", state)
    dump(tmp_path / "tsn.pdopt", {})  # as make_weights.py and an inference-only save write it
    with pytest.raises(WeightsError, match="bn_conv1_mean"):
        load_into(Tiny(), tmp_path / "tsn", "tsn")


def test_kinetics_classifier_is_ignored(tmp_path: Path) -> None:
    state = tiny_state()
    dump(
        tmp_path / "tsn.pdparams",
        {**state, "fc_0.w_0": np.zeros((2048, 400), np.float32), "fc_0.b_0": np.zeros((400,), np.float32)},
    )
    model = Tiny()
    load_into(model, tmp_path, "tsn")
    assert_loaded(model, state)


def test_one_error_lists_every_problem(tmp_path: Path) -> None:
    state = tiny_state()
    del state["bn_conv1_offset"], state["rgb_fc.b_0"]  # 2 missing
    state["rgb_fc.w_0"] = np.zeros((6, 4), np.float32)  # 1 mismatched
    state["res2a_branch2a_weights"] = np.zeros((64, 64, 1, 1), np.float32)  # 1 unexpected
    dump(tmp_path / "tsn.pdparams", state)
    model = Tiny()
    with pytest.raises(WeightsError) as info:
        load_into(model, tmp_path / "tsn", "tsn")
    message = str(info.value)
    for name in ("bn_conv1_offset", "rgb_fc.b_0", "rgb_fc.w_0", "res2a_branch2a_weights"):
        assert name in message, f"{name} not in: {message}"
    assert "(6, 4)" in message and "(4, 6)" in message
    assert "tsn.pdparams" in message
    # Nothing was half-loaded.
    for _, tensor in model.original_parameters():
        assert not tensor.numpy().any()


@pytest.mark.parametrize("content", [b"", b"not a pickle at all\n" * 10, b"\x80\x02}q\x00(X\x01\x00\x00\x00a"])
def test_unreadable_file_is_a_weights_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "tsn.pdparams").write_bytes(content)
    with pytest.raises(WeightsError, match=r"tsn\.pdparams"):
        load_into(Tiny(), tmp_path / "tsn", "tsn")


def test_pickle_of_something_else_is_a_weights_error(tmp_path: Path) -> None:
    dump(tmp_path / "tsn.pdparams", [np.zeros(3)])
    with pytest.raises(WeightsError, match="dict"):
        load_into(Tiny(), tmp_path / "tsn", "tsn")


def _py2_str(data: bytes) -> bytes:
    """A Python 2 `str` in a pickle (SHORT_BINSTRING / BINSTRING): bytes that Python 3 must decode."""
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<I", len(data)) + data


def python2_pickle(state: dict[str, np.ndarray]) -> bytes:
    """What Python 2's `pickle.dump(..., protocol=2)` wrote for {str: float32 ndarray} (fluid.save in 2020):
    names and array data as py2 str, numpy.core.multiarray._reconstruct."""
    out = bytearray(b"\x80\x02}(")
    for name, array in state.items():
        array = np.ascontiguousarray(array, dtype="<f4")
        out += _py2_str(name.encode())
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
        out += b"(K\x01(" + b"".join(b"J" + struct.pack("<i", d) for d in array.shape) + b"t"
        out += b"cnumpy\ndtype\n" + _py2_str(b"f4") + b"K\x00K\x01\x87R"
        out += b"(K\x03" + _py2_str(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        out += b"\x89" + _py2_str(array.tobytes()) + b"tb"
    return bytes(out + b"u.")


def test_python2_latin1_pickles_load(tmp_path: Path) -> None:
    state = tiny_state(3)
    data = python2_pickle(state)
    with pytest.raises(UnicodeDecodeError):  # the fixture really needs latin1 (float bytes are not ASCII)
        pickle.loads(data)
    (tmp_path / "tsn.pdparams").write_bytes(data)
    (tmp_path / "tsn.pdopt").write_bytes(python2_pickle({}))
    model = Tiny()
    load_into(model, tmp_path / "tsn", "tsn")
    assert_loaded(model, state)


def test_file_digest(tmp_path: Path) -> None:
    a = dump(tmp_path / "tsn.pdparams", tiny_state())
    b = dump(tmp_path / "attention_lstm.pdparams", tiny_state(1))
    before = file_digests([a, b])[0]
    assert before == file_digests([a, b])[0]
    assert len(before) == 64 and int(before, 16) >= 0
    data = bytearray(b.read_bytes())
    data[len(data) // 2] ^= 0x01
    b.write_bytes(bytes(data))
    assert file_digests([a, b])[0] != before


def test_file_digests_reads_each_file_once_for_all_digests(tmp_path: Path) -> None:
    """The chain's digest and each file's own, as hashlib gives them."""
    a = dump(tmp_path / "tsn.pdparams", tiny_state())
    b = dump(tmp_path / "attention_lstm.pdparams", tiny_state(1))
    whole, each = file_digests([a, b])
    assert whole == hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()
    assert each == {a: hashlib.sha256(a.read_bytes()).hexdigest(), b: hashlib.sha256(b.read_bytes()).hexdigest()}
    assert each[a] != each[b]


# ---------------------------------------------------------------------------------------------------------------
# Full generated files: ResNet-50 and ResNet-101


def test_resnet50_weights_load_into_resnet50_only(tmp_path: Path) -> None:
    require_shared()
    r50 = generated_weights(0, 50)
    model = tsn_resnet(50)
    load_into(model, r50 / "tsn", "tsn")
    with open(r50 / "tsn.pdparams", "rb") as f:
        state = pickle.load(f, encoding="latin1")
    for name, tensor in model.original_parameters():
        np.testing.assert_array_equal(tensor.numpy(), state[name], err_msg=name)
    with paddle.no_grad():
        features = model(paddle.to_tensor(np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype("f4")))
    assert features.shape == [1, 2048] and np.isfinite(features.numpy()).all()

    with pytest.raises(WeightsError) as info:
        load_into(tsn_resnet(101), r50 / "tsn", "tsn")
    message = str(info.value)
    assert "missing" in message and "res4b22_branch2c_weights" in message  # the 101-only blocks
    assert "unexpected" in message and "res4f_branch2a_weights" in message  # the 50-only names


def test_batchnorm_statistics_may_live_in_pdopt(tmp_path: Path) -> None:
    """Moving mean/variance saved as persistables in `.pdopt` (not Parameters) load the same."""
    require_shared()
    with open(generated_weights(0, 50) / "tsn.pdparams", "rb") as f:
        state = pickle.load(f, encoding="latin1")
    stats = {k: v for k, v in state.items() if k.endswith(("_mean", "_variance"))}
    assert len(stats) == 2 * 53
    dump(tmp_path / "tsn.pdparams", {k: v for k, v in state.items() if k not in stats})
    dump(tmp_path / "tsn.pdopt", stats)
    model = tsn_resnet(50)
    load_into(model, tmp_path, "tsn")
    for name, tensor in model.original_parameters():
        np.testing.assert_array_equal(tensor.numpy(), state[name], err_msg=name)


def test_resnet101_names_and_shapes_match_the_generated_file() -> None:
    require_shared()
    with open(generated_weights(0, 101) / "tsn.pdparams", "rb") as f:
        state = pickle.load(f, encoding="latin1")
    expected = expected_shapes(tsn_resnet(101))
    assert {k: tuple(v.shape) for k, v in state.items() if not k.startswith("fc_0.")} == expected
    assert len(expected) == 5 * 104  # 104 conv+BN pairs in the original ResNet-101 (conv1, 33 blocks, 4 shortcuts)


# ---------------------------------------------------------------------------------------------------------------
# Configs


def test_config_defaults_are_the_original_release() -> None:
    """configs/tsn.yaml and configs/attention_lstm.yaml, read at run time, hold the spec's values."""
    assert dataclasses.asdict(ExtractorConfig()) == {
        "layers": 101,
        "seg_num": 300,
        "short_size": 256,
        "target_size": 224,
        "image_mean": (0.485, 0.456, 0.406),
        "image_std": (0.229, 0.224, 0.225),
    }
    assert dataclasses.asdict(PredictorConfig()) == {
        "feature_size": 2048,
        "embedding_size": 1024,
        "lstm_size": 512,
        "num_classes": 3396,
        "dropout_rate": 0.5,
        "topk": 20,
    }


def _config_dir(tmp_path: Path, tsn: str) -> Path:
    """A copy of configs/ whose tsn.yaml is `tsn`."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "configs" / "tsn.yaml").write_text(tsn, encoding="utf-8")
    return tmp_path / "configs"


def test_an_edited_config_changes_the_networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "configs" / "tsn.yaml").read_text(encoding="utf-8")
    monkeypatch.setenv(
        CONFIG_DIR_ENV,
        str(_config_dir(tmp_path, text.replace("image_mean: [0.485, 0.456, 0.406]", "image_mean: [0.5, 0.5, 0.5]"))),
    )
    assert ExtractorConfig().image_mean == (0.5, 0.5, 0.5) and ExtractorConfig().seg_num == 300


@pytest.mark.parametrize(
    ("tsn", "message"),
    [
        ("layers: 50\nseg_nmu: 8\n", "unknown keys ['seg_nmu']"),
        ("layers: 50\n", "no 'seg_num'"),
        ("layers: [50\n", "cannot read it"),
        ("- layers\n", "expected a mapping"),
    ],
)
def test_a_bad_config_is_a_config_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tsn: str, message: str
) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(_config_dir(tmp_path, tsn)))
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        ExtractorConfig()
    assert str(tmp_path / "configs" / "tsn.yaml") in str(error.value)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="layers"):
        ExtractorConfig(layers=34)
