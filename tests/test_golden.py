"""Fidelity: the chain reproduces the golden outputs of the original 2020 VideoTag computation.

Golden files (../shared/golden, see its README) were made by an independent implementation of the original
pipeline with the seed-0 ResNet-101 weights of ../shared/tools/make_weights.py. Tolerances: features
|Δ| ≤ 1e-3, every probability |Δ| ≤ 1e-4, top-20 ids in the same order up to near-ties (`same_top20`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import (
    LABELS,
    SAMPLE_VIDEOS,
    TOLERANCE_FEATURES,
    TOLERANCE_PROBS,
    VIDEOS,
    golden_array,
    golden_lines,
    json_lines,
    link_or_copy,
    require_shared,
    run_cli,
    same_top20,
    seed0_tagger,  # noqa: F401  (fixture)
    seed0_weights,  # noqa: F401  (fixture)
)

# ---------------------------------------------------------------------------------------------------------------
# The tolerance rule itself (so that a too-lenient helper cannot make the golden tests blind)


def _probs(values: dict[int, float], size: int = 64) -> np.ndarray:
    probs = np.zeros(size)
    for class_id, p in values.items():
        probs[class_id] = p
    return probs


GOLDEN_IDS = list(range(20))
# Well separated probabilities (0.01 apart), except 4≈5 and 19≈20≈21 (near-ties), 22 far below.
BASE = {i: 0.9 - 0.01 * i for i in range(23)}
BASE[5] = BASE[4] - 5e-5
BASE[20] = BASE[19] - 5e-5
BASE[21] = BASE[19] - 9e-5
BASE[22] = BASE[19] - 5e-3
PROBS = _probs(BASE)


@pytest.mark.parametrize(
    ("ours", "expected"),
    [
        (GOLDEN_IDS, True),
        ([0, 1, 2, 3, 5, 4, *range(6, 20)], True),  # neighbours within 1e-4 swap
        ([1, 0, *range(2, 20)], False),  # neighbours 0.01 apart may not swap
        ([*range(19), 20], True),  # the 20th exchanged for a class within 1e-4
        ([*range(19), 21], True),
        ([*range(19), 22], False),  # ... but not for one further away
        ([*range(18), 20, 18], False),  # an outsider may not climb above the 20th place
        ([*range(19), 18], False),  # duplicates
        (list(range(19)), False),  # too short
        ([*range(10), 11, 10, *range(12, 20)], False),
        (list(reversed(GOLDEN_IDS)), False),
    ],
)
def test_same_top20_rule(ours: list[int], expected: bool) -> None:
    assert same_top20(ours, GOLDEN_IDS, PROBS) is expected


# ---------------------------------------------------------------------------------------------------------------
# In-process chain (dygraph engine, faithful preprocessing) against the golden arrays


def _check_against_golden(result, seg_num: int, video: str) -> None:
    features = golden_array(seg_num, video, "features")
    probs = golden_array(seg_num, video, "probs")
    golden = golden_lines(seg_num)[video]
    assert result.features.shape == features.shape == (seg_num, 2048)
    feature_error = float(np.abs(result.features.astype(np.float64) - features).max())
    assert feature_error <= TOLERANCE_FEATURES, f"{video}: features differ by {feature_error}"
    ours_probs = result.probabilities["videotag"]
    assert ours_probs.shape == probs.shape == (3396,)
    prob_error = float(np.abs(ours_probs.astype(np.float64) - probs).max())
    assert prob_error <= TOLERANCE_PROBS, f"{video}: probabilities differ by {prob_error}"
    ours = [tag["class_id"] for tag in result.tags]
    golden_ids = [tag["class_id"] for tag in golden["tags"]]
    assert len(ours) == 20
    assert same_top20(ours, golden_ids, probs), f"{video}: top-20 {ours} != golden {golden_ids}"
    names = {tag["class_id"]: tag["class_name"] for tag in golden["tags"]}
    for tag in result.tags:
        if tag["class_id"] in names:
            assert tag["class_name"] == names[tag["class_id"]]
        assert abs(tag["probability"] - probs[tag["class_id"]]) <= TOLERANCE_PROBS


@pytest.mark.parametrize("video", SAMPLE_VIDEOS)
def test_golden_seg8(seed0_tagger, video: str) -> None:  # noqa: F811
    result = seed0_tagger.tag(VIDEOS / video, seg_num=8)
    assert result.video.order.shape == (8,)
    _check_against_golden(result, 8, video)


@pytest.mark.slow
def test_golden_seg300_bikes(seed0_tagger) -> None:  # noqa: F811
    """The default: 300 frames (bikes.mp4 has 250, so the sampler repeats frames 0..49)."""
    result = seed0_tagger.tag(VIDEOS / "bikes.mp4")
    assert seed0_tagger.extractor_config.seg_num == 300
    assert result.video.frames_decoded == 250
    assert result.video.crops.shape[0] == 250  # each distinct frame once
    _check_against_golden(result, 300, "bikes.mp4")


# ---------------------------------------------------------------------------------------------------------------
# The command line, end to end


def test_cli_tag_matches_golden(seed0_weights: Path, tmp_path: Path) -> None:  # noqa: F811
    require_shared()
    save_dir = tmp_path / "results"
    videos = ["bikes.mp4", "carphone_pristine.mp4"]
    workdir = tmp_path / "work"  # paths are echoed as given; the golden lines hold bare names
    workdir.mkdir()
    for video in videos:
        link_or_copy(VIDEOS / video, workdir / video)
    proc = run_cli(
        "tag",
        *videos,
        "--seg-num",
        "8",
        "--engine",
        "dygraph",
        "--preprocess",
        "faithful",
        "--extractor-weights",
        str(seed0_weights / "tsn"),
        "--predictor-weights",
        str(seed0_weights / "attention_lstm"),
        "--label-file",
        str(LABELS),
        "--model-cache-dir",
        str(tmp_path / "model-cache"),
        "--save-dir",
        str(save_dir),
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.splitlines()) == 2, proc.stdout
    records = json_lines(proc.stdout)
    golden = golden_lines(8)
    assert [r["path"] for r in records] == videos
    for index, (record, video) in enumerate(zip(records, videos, strict=True)):
        assert "error" not in record and "model" not in record, record
        probs = golden_array(8, video, "probs")
        ours = [tag["class_id"] for tag in record["tags"]]
        golden_ids = [tag["class_id"] for tag in golden[video]["tags"]]
        assert same_top20(ours, golden_ids, probs), f"{video}: {ours} != {golden_ids}"
        names = {tag["class_id"]: tag["class_name"] for tag in golden[video]["tags"]}
        for tag in record["tags"]:
            assert set(tag) == {"class_id", "class_name", "probability"}
            assert abs(tag["probability"] - probs[tag["class_id"]]) <= TOLERANCE_PROBS
            if tag["class_id"] in names:
                assert tag["class_name"] == names[tag["class_id"]]
        probabilities = [tag["probability"] for tag in record["tags"]]
        assert probabilities == sorted(probabilities, reverse=True)

        # --save-dir: the original per-video file, [path, {class_id, class_name, probability}, ...]
        saved = json.loads((save_dir / f"result{index}.json").read_text(encoding="utf-8"))
        assert isinstance(saved, list) and len(saved) == 21
        assert saved[0] == video
        assert saved[1:] == record["tags"]
        assert all(set(entry) == {"class_id", "class_name", "probability"} for entry in saved[1:])
    assert sorted(p.name for p in save_dir.iterdir()) == ["result0.json", "result1.json"]


# ---------------------------------------------------------------------------------------------------------------
# Through the model process (the worker's placement of the networks: worker/model_process.py)


def test_golden_through_the_model_process(seed0_weights: Path, seed0_tagger, tmp_path: Path) -> None:  # noqa: F811
    """The chain the worker builds (networks in the model process, decoding in decoder children) gives the
    golden outputs; one video at a time (no merged batches) it is bit-identical to the in-process chain, and two
    videos at once (their chunks merged into shared batches) stay within the golden tolerance."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.chain_builder import build_chain
    from worker.settings import Settings

    settings = Settings(
        extractor_weights=str(seed0_weights / "tsn"),
        predictor_weights=str(seed0_weights / "attention_lstm"),
        label_file=str(LABELS),
        engine="dygraph",
        preprocess="faithful",
        seg_num=8,
        layers=101,
        model_cache_dir=str(tmp_path / "model-cache"),
    )
    chain = build_chain(settings, "process")
    try:
        assert chain.model_process is not None and chain.model_process.pid is not None
        for video in SAMPLE_VIDEOS:
            result = chain.tagger.tag(VIDEOS / video)
            _check_against_golden(result, 8, video)
            reference = seed0_tagger.tag(VIDEOS / video, seg_num=8)
            np.testing.assert_array_equal(result.features, reference.features)
            np.testing.assert_array_equal(result.probabilities["videotag"], reference.probabilities["videotag"])
            assert result.tags == reference.tags
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(lambda video: chain.tagger.tag(VIDEOS / video), SAMPLE_VIDEOS))
        for video, result in zip(SAMPLE_VIDEOS, together, strict=True):
            _check_against_golden(result, 8, video)
    finally:
        chain.close()
