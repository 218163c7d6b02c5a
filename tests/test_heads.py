"""Heads: tag control (pure selection), its files, the `predictors` setting, heads of any class count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from models.attention_lstm import attention_lstm
from models.config import ExtractorConfig, PredictorConfig
from models.csvfile import CsvError
from models.heads import HeadSpec, load_control, read_label_map, read_thresholds
from models.labels import LabelsError, compile_control, select_tags, top_k
from models.tagger import build_tagger, load_predictor
from models.weights import WeightsError, original_parameters, save_params
from worker.settings import SettingsError, load_settings
from worker.storage import split_s3_uri

LABELS = ["cat", "dog", "car", "bus", "tree", "cat"]  # a name twice, as label_3396.txt has (猫)
PROBS = np.array([0.9, 0.2, 0.6, 0.55, 0.05, 0.7])


def names(tags) -> list[str]:
    return [t["class_name"] for t in tags]


# ---------------------------------------------------------------------------------------------- selection


@pytest.mark.parametrize("seed", range(5))
def test_without_control_the_ranking_is_the_originals_ties_included(seed: int) -> None:
    probs = np.round(np.random.default_rng(seed).random(300), 2)  # many ties
    labels = [f"l{i}" for i in range(300)]
    ids = [t["class_id"] for t in select_tags(probs, compile_control(labels), 20)]
    assert ids == probs.argsort()[-20:][::-1].tolist()
    assert top_k(probs, labels, 20) == select_tags(probs, compile_control(labels), 20)


def test_a_label_named_twice_stays_twice_without_a_map() -> None:
    assert names(top_k(PROBS, LABELS, 3)) == ["cat", "cat", "car"]


def test_min_probability_and_per_label_thresholds() -> None:
    control = compile_control(LABELS, min_probability=0.58)
    assert names(select_tags(PROBS, control, 10)) == ["cat", "cat", "car"]
    # A threshold replaces min_probability for its label, lower or higher.
    control = compile_control(LABELS, min_probability=0.58, thresholds={"bus": 0.5, "car": 0.95})
    assert names(select_tags(PROBS, control, 10)) == ["cat", "cat", "bus"]


def test_allow_and_deny() -> None:
    assert names(select_tags(PROBS, compile_control(LABELS, allow={"dog", "tree"}), 10)) == ["dog", "tree"]
    assert names(select_tags(PROBS, compile_control(LABELS, deny={"cat"}), 2)) == ["car", "bus"]
    both = compile_control(LABELS, allow={"dog", "tree"}, deny={"dog"})
    assert names(select_tags(PROBS, both, 10)) == ["tree"]


def test_label_map_many_to_one_keeps_the_highest_probability() -> None:
    control = compile_control(LABELS, label_map={"car": "vehicle", "bus": "vehicle", "cat": "animal", "dog": "animal"})
    tags = select_tags(PROBS, control, 10)
    assert [(t["class_name"], t["class_id"], t["probability"]) for t in tags] == [
        ("animal", 0, 0.9),
        ("vehicle", 2, 0.6),
        ("tree", 4, 0.05),
    ]
    # topk counts published tags, not source labels.
    assert names(select_tags(PROBS, control, 2)) == ["animal", "vehicle"]
    # The controls apply to the source labels: a denied source does not lend its probability to its target.
    control = compile_control(LABELS, deny={"car"}, label_map={"car": "vehicle", "bus": "vehicle"})
    assert [(t["class_name"], t["probability"]) for t in select_tags(PROBS, control, 3)] == [
        ("cat", 0.9),
        ("cat", 0.7),
        ("vehicle", 0.55),
    ]


@pytest.mark.parametrize(
    "control",
    [{"thresholds": {"kat": 0.5}}, {"allow": {"cat", "dgo"}}, {"deny": {"x"}}, {"label_map": {"bsu": "vehicle"}}],
)
def test_a_name_the_head_does_not_have_is_an_error(control: dict) -> None:
    with pytest.raises(LabelsError, match="labels the head does not have"):
        compile_control(LABELS, **control)


# ---------------------------------------------------------------------------------------------- files


def test_control_files(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("\ufefflabel,threshold\ncar, 0.9\n\nbus,0.1\n", encoding="utf-8")  # BOM, blanks
    (tmp_path / "m.csv").write_text('label,target\ncar,vehicle\nbus,"vehicle"\n', encoding="utf-8")
    (tmp_path / "deny.txt").write_text("tree\n\n", encoding="utf-8")
    spec = HeadSpec(
        "h",
        thresholds=str(tmp_path / "t.csv"),
        label_map=str(tmp_path / "m.csv"),
        deny=str(tmp_path / "deny.txt"),
        min_probability=0.3,
    )
    assert read_thresholds(tmp_path / "t.csv") == {"car": 0.9, "bus": 0.1}
    assert read_label_map(tmp_path / "m.csv") == {"car": "vehicle", "bus": "vehicle"}
    assert names(select_tags(PROBS, load_control(spec, LABELS), 10)) == ["cat", "cat", "vehicle"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("car,0.5\n", "header label,threshold"),
        ("label,threshold\ncar,high\n", "not a probability"),
        ("label,threshold\ncar,1.5\n", "not a probability"),
        ("label,threshold\ncar,0.5\ncar,0.6\n", "given twice"),
        ("label,threshold\ncar,0.5,x\n", ":2: 3 cells"),
    ],
)
def test_bad_threshold_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises((LabelsError, CsvError), match=message):
        read_thresholds(path)


def test_control_errors_name_the_head(tmp_path: Path) -> None:
    (tmp_path / "allow.txt").write_text("cat\nunicorn\n", encoding="utf-8")
    with pytest.raises(LabelsError, match=r"head sports: allow names 1 labels .*unicorn"):
        load_control(HeadSpec("sports", allow=str(tmp_path / "allow.txt")), LABELS)


@pytest.mark.parametrize(
    "kwargs", [{"name": "bad name"}, {"name": "-x"}, {"name": "h", "topk": 0}, {"name": "h", "min_probability": 1.5}]
)
def test_head_spec_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        HeadSpec(**kwargs)


# ---------------------------------------------------------------------------------------------- settings


def test_predictors_from_yaml_env_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "w.yaml"
    config.write_text(
        "predictors:\n  - name: videotag\n    min_probability: 0.25\n"
        "  - {name: sports, weights: h/attention_lstm, labels: h/labels.txt, topk: '3'}\n"
    )
    settings = load_settings(config, env={})
    assert settings.predictors == [
        HeadSpec("videotag", min_probability=0.25),
        HeadSpec("sports", weights="h/attention_lstm", labels="h/labels.txt", topk=3),
    ]
    env = {"VIDEOTAG_PREDICTORS": json.dumps([{"name": "only", "deny": "d.txt"}])}
    assert load_settings(config, env=env).predictors == [HeadSpec("only", deny="d.txt")]
    flag = json.dumps([{"name": "flagged"}])
    assert load_settings(config, env=env, overrides={"predictors": flag}).predictors == [HeadSpec("flagged")]
    assert load_settings(env={}).predictors == []
    assert load_settings(env={}).redacted()["predictors"] == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "not JSON"),
        ('{"name": "a"}', "list of mappings"),
        ('["a"]', "list of mappings"),
        ('[{"weights": "w"}]', "needs a name"),
        ('[{"name": "a", "wieghts": "w"}]', "unknown keys"),
        ('[{"name": "a", "topk": "many"}]', r"predictors\[0\].topk"),
        ('[{"name": "a", "topk": 2.5}]', r"predictors\[0\].topk"),
        ('[{"name": "a", "weights": ["w"]}]', r"predictors\[0\].weights"),
        ('[{"name": "a", "min_probability": 2}]', "within"),
        ('[{"name": "a"}, {"name": "a"}]', "unique"),
    ],
)
def test_bad_predictors_are_refused(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env={"VIDEOTAG_PREDICTORS": value})


def test_split_s3_uri() -> None:
    assert split_s3_uri("s3://bucket/features/") == ("bucket", "features/")
    assert split_s3_uri("s3://bucket") == ("bucket", "")
    for bad in ("http://bucket/x", "s3:///x", "bucket/x"):
        with pytest.raises(ValueError):
            split_s3_uri(bad)


# ---------------------------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def five_class_head(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, paddle.nn.Layer]:
    """A 5-class head in the original layout, as `videotag train` writes one."""
    out = tmp_path_factory.mktemp("head")
    model = attention_lstm(num_classes=5)  # Paddle's initialisation: random enough, and fast
    save_params(model, out / "attention_lstm.pdparams")
    (out / "labels.txt").write_text("a\nb\nc\nd\ne\n", encoding="utf-8")
    return out, model


def test_class_count_is_read_from_the_weights(five_class_head) -> None:
    out, model = five_class_head
    loaded, path = load_predictor(out / "attention_lstm", PredictorConfig())
    assert path == out / "attention_lstm.pdparams" and loaded.output.weight.shape == [4096, 5]
    for (name, ours), (_, theirs) in zip(original_parameters(loaded), original_parameters(model), strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=name)


def test_the_class_count_comes_from_the_output_layer_and_the_rest_is_checked_strictly(tmp_path: Path) -> None:
    import pickle

    state = {"output.w_0": np.zeros((4096, 5), np.float32), "output.b_0": np.zeros(7, np.float32)}
    with (tmp_path / "attention_lstm.pdparams").open("wb") as f:
        pickle.dump(state, f, protocol=2)
    with pytest.raises(WeightsError, match=r"missing 13: .*mismatched 1: output\.b_0: file \(7,\) != model \(5,\)"):
        load_predictor(tmp_path, PredictorConfig())


def test_a_tagger_with_a_head_of_its_own(five_class_head, tmp_path: Path) -> None:
    out, model = five_class_head
    spec = HeadSpec("mine", weights=str(out / "attention_lstm"), labels=str(out / "labels.txt"), topk=3)
    tagger = build_tagger(
        "none", "none", "none", ExtractorConfig(layers=50, seg_num=4), heads=[spec], allow_random_weights=True
    )
    [head] = tagger.heads
    assert head.labels == list("abcde") and head.weights.startswith("sha256:")
    assert tagger.info["heads"] == {"mine": {"classes": 5, "weights": head.weights}}
    features = np.random.default_rng(0).standard_normal((2, 4, 2048)).astype(np.float32)
    with paddle.no_grad():
        expected = model(paddle.to_tensor(features)).numpy()
    np.testing.assert_allclose(tagger.probabilities(features)["mine"], expected, rtol=1e-6)
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n", encoding="utf-8")
    with pytest.raises(LabelsError, match="4 labels, the model has 5 classes"):
        build_tagger(
            "none",
            "none",
            "none",
            ExtractorConfig(layers=50, seg_num=4),
            allow_random_weights=True,
            heads=[HeadSpec("mine", weights=str(out), labels=str(tmp_path / "four.txt"))],
        )


def test_training_dropout_drops_without_rescaling_and_inference_scales() -> None:
    """fluid's downgrade_in_infer: kept activations are unchanged in training (no 1/(1-p)), all are scaled by
    (1 - p) at inference. Heads trained otherwise would be mis-scaled by the inference path."""
    model = attention_lstm(num_classes=3)
    seen: dict[str, paddle.Tensor] = {}
    model.rgb_lstm_forward.register_forward_post_hook(lambda _l, _i, out: seen.__setitem__("fwd", out))
    model.rgb_lstm_backward.register_forward_post_hook(lambda _l, _i, out: seen.__setitem__("bwd", out))
    model.rgb_weight.register_forward_pre_hook(lambda _l, inputs: seen.__setitem__("seq", inputs[0]))
    features = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 2048)).astype(np.float32))
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with paddle.no_grad():
            model(features)
        concat = paddle.concat([seen["fwd"], seen["bwd"]], axis=-1).numpy()
        seq = seen["seq"].numpy()
        if mode == "eval":
            np.testing.assert_array_equal(seq, concat * np.float32(0.5))
        else:
            kept = seq != 0
            assert 0.3 < kept.mean() < 0.7
            np.testing.assert_array_equal(seq[kept], concat[kept])


def test_a_malformed_features_output_is_a_settings_error() -> None:
    from worker.worker import Worker

    with pytest.raises(SettingsError, match="features_output"):
        Worker(load_settings(env={"VIDEOTAG_FEATURES_OUTPUT": "https://bucket/features/"}))
