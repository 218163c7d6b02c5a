"""A real `videotag worker` with two heads against the suite's broker and S3 server: one extraction, both heads'
tags in every result (the first also as `tags`), and the features stored where `features_output` says."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from models.attention_lstm import attention_lstm
from models.errors import InputError
from models.weights import save_params
from tests.integration.worker_process import SpawnWorker
from tests.kafka_helpers import Topics, consume_all, produce
from worker import messages
from worker.local.demo import make_clips
from worker.local.stack import KafkaBroker, S3Server
from worker.storage import TransientError, put_object

pytestmark = pytest.mark.integration


def test_a_worker_with_two_heads_publishes_both_and_stores_features(
    spawn: SpawnWorker,
    kafka_broker: KafkaBroker,
    s3_server: S3Server,
    topics: Topics,
    bucket: str,
    unique_group_id: str,
    tmp_path: Path,
) -> None:
    head = tmp_path / "head"
    head.mkdir()
    save_params(attention_lstm(num_classes=3), head / "attention_lstm.pdparams")  # a 3-class head, as trained
    (head / "labels.txt").write_text("alpha\nbeta\ngamma\n", encoding="utf-8")
    (head / "deny.txt").write_text("beta\n", encoding="utf-8")
    predictors = [
        {"name": "videotag"},
        {
            "name": "mine",
            "weights": str(head / "attention_lstm"),
            "labels": str(head / "labels.txt"),
            "topk": 3,
            "deny": str(head / "deny.txt"),
        },
    ]
    client = s3_server.client()
    clips = make_clips(tmp_path, seconds=1.0)[:2]
    for clip in clips:
        client.upload_file(str(clip), bucket, f"in/{clip.name}")
    worker = spawn(
        kafka_broker,
        s3_server,
        topics,
        unique_group_id,
        predictors=json.dumps(predictors),
        features_output=f"s3://{bucket}/features/",
    )
    worker.wait_ready()
    produce(
        kafka_broker.bootstrap_servers,
        topics.input,
        [
            json.dumps({"video_id": f"v/{clip.stem}", "bucket": bucket, "key": f"in/{clip.name}"}).encode()
            for clip in clips
        ],
    )
    results = [json.loads(r.value) for r in consume_all(kafka_broker.bootstrap_servers, topics.output, 2, 120)]
    assert sorted(r["video_id"] for r in results) == sorted(f"v/{clip.stem}" for clip in clips), worker.log()[-3000:]
    for result in results:
        jsonschema.validate(result, messages.schema("result"))
        assert list(result["heads"]) == ["videotag", "mine"]
        assert result["tags"] == result["heads"]["videotag"] and len(result["tags"]) == 20
        assert sorted(t["class_name"] for t in result["heads"]["mine"]) == ["alpha", "gamma"]  # beta denied
        assert result["model"]["heads"]["mine"]["classes"] == 3
        assert result["features_uri"] == f"s3://{bucket}/features/{result['video_id']}.npy"
        stored = client.get_object(Bucket=bucket, Key=f"features/{result['video_id']}.npy")
        assert stored["Metadata"] == {"seg-num": "4", "extractor-weights": "random-untrained"}
        features = np.load(io.BytesIO(stored["Body"].read()), allow_pickle=False)
        assert features.shape == (4, 2048) and features.dtype == np.float32
    assert worker.metric("videotag_stage_seconds_count", 'stage="store_features"') == 2


def test_storing_features_sorts_s3_errors_like_fetching(s3_server: S3Server, bucket: str) -> None:
    """A key S3 refuses is the video's problem (dead-lettered); a missing bucket is the operator's (retried)."""
    client = s3_server.client()
    put_object(client, bucket, "features/ok.npy", b"x", {"seg-num": "4"})
    assert client.get_object(Bucket=bucket, Key="features/ok.npy")["Body"].read() == b"x"
    with pytest.raises(TransientError):  # SeaweedFS answers 403, AWS NoSuchBucket: both are retried
        put_object(client, "no-such-bucket-for-features", "features/a.npy", b"x", {})
    with pytest.raises(InputError) as permanent:
        put_object(client, bucket, "features/../escape.npy", b"x", {})
    assert permanent.value.code == "invalid_request"
