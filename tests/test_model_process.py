"""The model process: its framing (header + raw array bytes, no pickle), batching with a per-request retry,
death → model_process_died → restart → success, configuration errors passed back, and the worker's breaker
across a restart.

The lifecycle tests run a small child that speaks the real protocol with the real `serve` and `describe`
(worker/model_process.py) over a chain whose networks are numpy functions, so that they take seconds; the
real child (Paddle) is run for the configuration error here, and for fidelity in tests/test_golden.py."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from models.errors import ErrorCode, SystemicError
from worker.breaker import Breaker, make_clip
from worker.metrics import Metrics
from worker.model_process import (
    MAX_HEADER_BYTES,
    MODEL_SETTINGS,
    FramingError,
    ModelProcess,
    read_message,
    write_message,
)
from worker.pipeline import ModelThread
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]

# A child with the real protocol: the real describe() and serve(), numpy networks. The extractor sums each
# frame (and fails on a batch holding a NaN); FAKE_MODEL_DELAY_S makes each batch take that long.
FAKE_CHILD = r"""
import os, sys, time
import numpy as np
from models.config import ExtractorConfig
from models.labels import compile_control
from models.chain import Head, VideoTagger
from worker import model_process as mp

DELAY = float(os.environ.get("FAKE_MODEL_DELAY_S", "0"))

def extractor(batch):
    time.sleep(DELAY)
    if np.isnan(batch).any():
        raise ValueError("a NaN in the batch")
    return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True).astype(np.float32)

def predictor(features):
    mean = np.abs(features.mean(axis=(1, 2)))
    return np.stack([mean, mean * 2, mean * 3], axis=1).astype(np.float32)

replies = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
print("a library printing to stdout does not reach the replies")
start, _ = mp.read_message(sys.stdin.buffer)
mp.die_with_parent(start["parent"])
labels = os.environ.get("FAKE_MODEL_LABELS", "a,b,c").split(",")
if os.environ.get("FAKE_MODEL_LABELS_FILE"):
    labels = open(os.environ["FAKE_MODEL_LABELS_FILE"]).read().split(",")
tagger = VideoTagger(ExtractorConfig(layers=50, seg_num=4), extractor,
                     (Head("videotag", predictor, labels, compile_control(labels), 2, "fake"),),
                     info={"weights": "fake", "extractor_weights": "fake"})
mp.write_message(replies, mp.describe(tagger))
mp.serve(tagger, sys.stdin.buffer, replies, start["settings"]["batch_size"])
"""
FAKE_COMMAND = (sys.executable, "-P", "-c", FAKE_CHILD)


# ---------------------------------------------------------------------------------------------- framing


def _pipe_roundtrip(header: dict, array: np.ndarray | None) -> tuple[dict, np.ndarray | None]:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "wb") as writer:
        thread = threading.Thread(target=write_message, args=(writer, header, array))
        thread.start()
        got = read_message(reader)
        thread.join()
    return got


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32),  # 19 MB: a full chunk
        np.array([[np.inf, -np.inf, 1e-38]], dtype=np.float64),
        np.zeros((0, 2048), dtype=np.float32),
        np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not contiguous: sent as its values
    ],
)
def test_header_and_array_both_ways_through_a_pipe(array):
    header, back = _pipe_roundtrip({"id": 7, "engine": "extractor"}, array)
    assert header["id"] == 7 and header["engine"] == "extractor"
    assert header["dtype"] == array.dtype.name and header["shape"] == list(array.shape)
    assert back is not None and back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable  # engines may write into what they get


def test_header_only_messages_and_a_clean_end():
    stream = io.BytesIO()
    write_message(stream, {"status": "ready", "labels": ["猫", "狗"]})
    write_message(stream, {"id": 1, "status": "ok"}, np.ones((1, 2), np.float32))
    stream.seek(0)
    assert read_message(stream) == ({"status": "ready", "labels": ["猫", "狗"]}, None)
    header, array = read_message(stream)
    assert header["status"] == "ok" and array is not None and array.tolist() == [[1.0, 1.0]]
    with pytest.raises(EOFError):
        read_message(stream)


def _framed(header: bytes, body: bytes = b"") -> io.BytesIO:
    return io.BytesIO(struct.pack(">I", len(header)) + header + body)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_framed(b"{not json"), "not JSON"),
        (_framed(b"\xff\xfe"), "not JSON"),
        (_framed(b"[1, 2]"), "not a JSON object"),
        (_framed(json.dumps({"dtype": "object", "shape": [1]}).encode()), "dtype"),
        (_framed(json.dumps({"dtype": "<U8", "shape": [1]}).encode()), "dtype"),
        (_framed(json.dumps({"shape": [1]}).encode()), "dtype"),
        (_framed(json.dumps({"dtype": "float32", "shape": [-1]}).encode()), "shape"),
        (_framed(json.dumps({"dtype": "float32", "shape": [True]}).encode()), "shape"),
        (_framed(json.dumps({"dtype": "float32", "shape": "3"}).encode()), "shape"),
        (_framed(json.dumps({"dtype": "float32", "shape": [1] * 9}).encode()), "shape"),
        (_framed(json.dumps({"dtype": "float32", "shape": [1 << 20, 1 << 20]}).encode()), "over"),
        (_framed(json.dumps({"dtype": "float32", "shape": [4]}).encode(), b"\0" * 15), "cut short"),
        (io.BytesIO(struct.pack(">I", MAX_HEADER_BYTES + 1)), "over"),
        (io.BytesIO(struct.pack(">I", 10) + b'{"a"'), "cut short"),
        (io.BytesIO(b"\0\0"), "cut short"),
    ],
)
def test_malformed_messages_are_rejected(raw, why):
    with pytest.raises(FramingError, match=why):
        read_message(raw)


def test_only_float_arrays_are_sent():
    with pytest.raises(FramingError, match="only"):
        write_message(io.BytesIO(), {"id": 1}, np.array(["text"]))
    with pytest.raises(FramingError, match="only"):
        write_message(io.BytesIO(), {"id": 1}, np.array([object()]))


# ---------------------------------------------------------------------------------------------- batching


def test_a_failed_merged_batch_is_run_again_per_request_so_one_bad_request_fails_alone():
    seen: list[int] = []
    gate, entered = threading.Event(), threading.Event()

    def engine(batch):
        entered.set()
        gate.wait(5)
        seen.append(len(batch))
        if np.isnan(batch).any():
            raise ValueError("a NaN in the batch")
        return batch.sum(axis=1, keepdims=True)

    thread = ModelThread(max_batch=64).start()
    try:
        blocker = thread.submit(engine, np.zeros((1, 3), np.float32))  # holds the thread while the rest queue
        assert entered.wait(5)
        good = [thread.submit(engine, np.full((2, 3), i, np.float32)) for i in range(3)]
        bad = thread.submit(engine, np.full((1, 3), np.nan, np.float32))
        more = thread.submit(engine, np.ones((1, 3), np.float32))
        gate.set()
        blocker.result(5)
        for i, future in enumerate(good):
            np.testing.assert_array_equal(future.result(5), np.full((2, 1), 3 * i, np.float32))
        with pytest.raises(ValueError, match="NaN"):
            bad.result(5)
        assert more.result(5).tolist() == [[3.0]]
    finally:
        thread.stop()
    # The merged batch (2+2+2+1+1 rows) failed once, then each of its five requests ran alone.
    assert seen == [1, 8, 2, 2, 2, 1, 1]


# ---------------------------------------------------------------------------------------------- lifecycle


@pytest.fixture
def fake_child_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake child runs with `python -P -c`: the repository reaches it through PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def _settings(**overrides) -> Settings:
    return Settings(**{"retry_backoff_base_s": 0.05, "retry_backoff_max_s": 2.0, "batch_size": 32, **overrides})


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_requests_of_several_videos_are_merged_and_answered_in_the_child(fake_child_env, monkeypatch):
    monkeypatch.setenv("FAKE_MODEL_DELAY_S", "0.2")
    process = ModelProcess(_settings(), command=FAKE_COMMAND).start()
    try:
        tagger = process.tagger()
        assert [head.name for head in tagger.heads] == ["videotag"] and tagger.heads[0].labels == ["a", "b", "c"]
        assert tagger.info["weights"] == "fake" and tagger.extractor_config.seg_num == 4
        batches = [np.full((4, 2, 2), i, np.float32) for i in range(8)]
        futures = [tagger.extractor.submit(batch) for batch in batches]  # submitted without waiting
        for i, future in enumerate(futures):
            np.testing.assert_array_equal(future.result(30), np.full((4, 1), 4 * i, np.float32))
        with pytest.raises(RuntimeError, match="ValueError: a NaN in the batch"):  # as in-process: internal_error
            tagger.extractor(np.full((1, 2, 2), np.nan, np.float32))
        probs = tagger.heads[0].predictor(np.ones((1, 4, 1), np.float32))
        assert probs.tolist() == [[1.0, 2.0, 3.0]]
    finally:
        process.close()


def test_death_fails_in_flight_requests_then_the_process_is_restarted(fake_child_env, monkeypatch):
    monkeypatch.setenv("FAKE_MODEL_DELAY_S", "1.0")
    metrics = Metrics()
    process = ModelProcess(_settings(), metrics, command=FAKE_COMMAND).start()
    try:
        first = process.pid
        assert first is not None and process.problem() is None
        assert metrics.registry.get_sample_value("videotag_model_process_up") == 1
        in_flight = process.submit("extractor", np.ones((2, 2, 2), np.float32))
        time.sleep(0.3)  # it is in the network now
        os.kill(first, signal.SIGKILL)
        with pytest.raises(SystemicError) as caught:
            in_flight.result(10)
        assert caught.value.code is ErrorCode.MODEL_PROCESS_DIED and "SIGKILL" in caught.value.message
        assert ErrorCode.MODEL_PROCESS_DIED.kind == "systemic"
        _wait_for(lambda: process.problem() is None and process.pid not in (None, first))
        assert not _alive(first)
        assert process.restarts == 1
        assert metrics.registry.get_sample_value("videotag_model_process_restarts_total") == 1
        assert metrics.registry.get_sample_value("videotag_model_process_up") == 1
        np.testing.assert_array_equal(process.submit("extractor", np.ones((1, 2, 2), np.float32)).result(10), [[4]])
    finally:
        process.close()
    assert metrics.registry.get_sample_value("videotag_model_process_up") == 0


def test_while_restarting_the_worker_is_told_why_and_new_requests_wait_for_the_new_process(fake_child_env):
    metrics = Metrics()
    process = ModelProcess(_settings(retry_backoff_base_s=1.0), metrics, command=FAKE_COMMAND).start()
    try:
        first = process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait_for(lambda: process.problem() is not None, 10)
        assert "model process died (killed by SIGKILL)" in str(process.problem())
        assert process.down_for() > 0
        assert metrics.registry.get_sample_value("videotag_model_process_up") == 0
        answer = process.submit("extractor", np.ones((1, 1, 1), np.float32)).result(60)  # waits, then runs
        assert answer.tolist() == [[1.0]] and process.pid != first and process.down_for() == 0
    finally:
        process.close()


def test_a_child_answering_garbage_is_treated_as_dead_and_replaced(fake_child_env, tmp_path):
    """A reply that breaks the framing kills and replaces the child; its requests fail model_process_died."""
    marker = tmp_path / "garbage-once"
    garbage = (
        f"import os\nFIRST = not os.path.exists({str(marker)!r})\nopen({str(marker)!r}, 'a').close()\n"
        + FAKE_CHILD.replace(
            "mp.serve(", "if FIRST: replies.write(b'\\xff' * 64); replies.flush(); time.sleep(60)\nmp.serve("
        )
    )
    process = ModelProcess(_settings(), command=(sys.executable, "-P", "-c", garbage)).start()
    try:
        first = process.pid
        _wait_for(lambda: process.pid not in (None, first) and process.problem() is None, 60)
        assert process.submit("extractor", np.ones((1, 1, 1), np.float32)).result(10).tolist() == [[1.0]]
    finally:
        process.close()


def test_the_child_dies_with_its_parent(tmp_path):
    """A worker killed with SIGKILL takes its model process with it (PR_SET_PDEATHSIG)."""
    pid_file = tmp_path / "model.pid"
    script = (
        "import sys, numpy as np\nfrom worker.settings import Settings\n"
        "from worker.model_process import ModelProcess\n"
        f"p = ModelProcess(Settings(), command={FAKE_COMMAND!r}).start()\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\nimport time\ntime.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    import subprocess

    parent = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 60)
        child = int(pid_file.read_text())
        assert _alive(child)
        parent.kill()
        parent.wait(10)
        _wait_for(lambda: not _alive(child), 10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_configuration_error_in_the_child_is_the_same_one_line_error_as_in_process(tmp_path):
    """Missing weights: the real child (Paddle) reports what load_tagger reports in-process."""
    from models.weights import WeightsError
    from worker.chain_builder import load_tagger

    settings = _settings(extractor_weights=str(tmp_path / "nowhere" / "tsn"), layers=50, engine="dygraph")
    with pytest.raises(WeightsError) as in_process:
        load_tagger(settings)
    process = ModelProcess(settings)
    with pytest.raises(WeightsError) as from_child:
        process.start()
    assert str(from_child.value) == str(in_process.value)
    assert "\n" not in str(from_child.value)
    assert process.pid is None


def test_the_breaker_self_test_waits_for_a_restart_instead_of_stopping_the_worker(fake_child_env, tmp_path):
    """The threshold-th systemic failure runs the self-test; if the model process is being restarted then, the
    self-test waits for it and passes: a restart that succeeds never makes the worker stop itself."""
    process = ModelProcess(_settings(retry_backoff_base_s=1.5), command=FAKE_COMMAND).start()
    try:
        tagger = process.tagger()
        breaker = Breaker(1, lambda clip: tagger.tag(clip, name="self-test"))
        os.kill(process.pid, signal.SIGKILL)
        _wait_for(lambda: process.problem() is not None, 10)
        assert breaker.failure_is_the_inputs() is True  # the self-test passed, after the restart
        assert breaker.broken is None and process.restarts == 1
    finally:
        process.close()


def test_many_threads_share_one_child(fake_child_env, tmp_path):
    """Videos in flight on several threads, each with its chunks submitted ahead: every answer reaches its own
    caller."""
    process = ModelProcess(_settings(), command=FAKE_COMMAND).start()
    clip = tmp_path / "clip.mp4"
    make_clip(clip)
    try:
        tagger = process.tagger()
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: tagger.tag(clip), range(8)))
        first = results[0]
        assert len(first.tags) == 2 and first.features.shape == (4, 1)
        for result in results[1:]:
            np.testing.assert_array_equal(result.features, first.features)
    finally:
        process.close()


def test_a_restart_that_loads_another_chain_is_refused(fake_child_env, monkeypatch, tmp_path):
    """The worker tags with the labels and publishes the info of the chain it started with: a new process that
    loaded something else (weights or labels changed on disk) is not used; the worker stays not-ready."""
    labels = tmp_path / "labels.txt"
    labels.write_text("a,b,c")
    monkeypatch.setenv("FAKE_MODEL_LABELS_FILE", str(labels))
    process = ModelProcess(_settings(), command=FAKE_COMMAND).start()
    try:
        labels.write_text("a,b,changed")
        os.kill(process.pid, signal.SIGKILL)
        _wait_for(lambda: "another chain" in str(process.problem()), 60)
        assert process.pid is None and process.restarts == 0
    finally:
        process.close()


def test_liveness_fails_once_the_model_process_stayed_down_for_stuck_after_s():
    """Restarts are retried for as long as they fail; /healthz turns that into a pod restart after stuck_after_s."""
    from worker.chain_builder import Chain
    from worker.worker import Worker

    class Down:
        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        def problem(self) -> str:
            return "model process died (killed by SIGKILL); restarting it"

        def down_for(self) -> float:
            return self.seconds

    worker = Worker(Settings())
    worker.chain = Chain(None, lambda: None, Down(60.0))  # type: ignore[arg-type]
    assert worker.healthy() == (True, "ok")
    assert worker.chain.problem() == "model process died (killed by SIGKILL); restarting it"
    worker.chain = Chain(None, lambda: None, Down(901.0))  # type: ignore[arg-type]
    assert worker.healthy() == (False, "model process down for 901 s")


def test_the_child_gets_every_setting_the_chain_is_loaded_from() -> None:
    """The model process loads its chain with `load_tagger` from the settings it is sent (`model_settings`):
    a setting `load_tagger` reads but the child is not sent would silently take its default there."""
    import ast
    import inspect

    from worker import chain_builder

    tree = ast.parse(inspect.getsource(chain_builder.load_tagger))
    read = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "settings"
    }
    assert "int8_calibration" in read and "simulated_ms_per_frame" in read  # the parse sees what it must
    assert read <= set(MODEL_SETTINGS), read - set(MODEL_SETTINGS)
