"""The networks in a process of their own (`python -P -m worker.model_process`), fed over pipes by the worker.

Why: Paddle Inference's `predictor.run()` holds the GIL for its whole duration (Paddle 3.3), so in the worker's
process every extractor run froze kafka-python's IO thread and the health server for up to a second.
Here the worker's threads only move arrays through pipes; the GIL that Paddle holds is the child's. This is
also the shape of a GPU node: one model process per accelerator, many decoder processes feeding it.

Protocol (both ways, nothing pickled): each message is a 4-byte big-endian header length, a JSON header, then,
when the header has `dtype` and `shape`, that many raw little-endian array bytes (read with np.frombuffer
after the header is checked: `FramingError` for anything malformed). The worker sends one `start` message
(the model settings, its pid), the child answers `ready` with what the worker needs to tag without the
networks (labels, tag control, info) or `config_error` (the same one-line error as loading in-process: missing
weights, bad labels). Then requests `{"id", "engine": "extractor" | "head:<name>"}` + batch, each answered
`{"id", "status": "ok"}` + output, `error` (the engine failed on it: the worker's internal_error), or `coded`
(an InputError or SystemicError, code kept). Replies come back as batches finish, in any order.

Inside, requests of all in-flight videos are merged into batches by a `worker.pipeline.ModelThread` (a failed
merged batch is re-run per request). The worker side (`ModelProcess`) gives callers futures.

Lifecycle invariants:
- the child dies with the worker (PR_SET_PDEATHSIG, as the decoder children: models/decoder_process.py) and
  exits when its stdin closes;
- when it dies (kill -9, OOM, a native crash, garbage on the pipe), every request in flight fails with
  `model_process_died` (systemic: the worker retries the video, never dead-letters it); the worker is not
  ready while it restarts the child with backoff (the retry settings), and requests made meanwhile wait for it
  (a video's deadline still cancels the wait);
- the child's stdout is the reply channel only: it moves fd 1 aside at once and points fd 1 at stderr, so a
  library that prints cannot corrupt the replies. Its environment is the worker's without AWS_* and
  VIDEOTAG_* (it needs no credentials; its settings come in the start message).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from models import cancel
from models.config import CONFIG_DIR_ENV
from models.decoder_process import die_with_parent, exit_reason
from models.engines import CANCEL_POLL_S, wait
from models.errors import CodedError, ConfigError, ErrorCode, InputError, SystemicError

if TYPE_CHECKING:
    from models.chain import VideoTagger
    from worker.metrics import Metrics
    from worker.settings import Settings

log = logging.getLogger(__name__)

COMMAND = (sys.executable, "-P", "-m", "worker.model_process")
_LINUX = sys.platform.startswith("linux")
_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 16 * 1024**2  # the ready message carries every head's labels and tag control
MAX_ARRAY_BYTES = 2 * 1024**3
MAX_DIMS = 8
DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
# What the child is told of the settings: the model's (never a Kafka or S3 one, so no secret).
MODEL_SETTINGS = (
    "extractor_weights",
    "predictor_weights",
    "label_file",
    "predictors",
    "allow_random_weights",
    "layers",
    "seg_num",
    "topk",
    "device",
    "engine",
    "precision",
    "preprocess",
    "batch_size",
    "cpu_threads",
    "tensorrt",
    "model_cache_dir",
    "max_width",
    "max_height",
    "log_level",
    "simulated_ms_per_frame",
    "int8_calibration",
)
_ENV_DROPPED = ("AWS_", "VIDEOTAG_")


class FramingError(ValueError):
    """A message that does not follow the protocol (a child answering garbage, a truncated message)."""


# ---------------------------------------------------------------------------------------------- framing


def write_message(stream: IO[bytes], header: Mapping[str, Any], array: np.ndarray | None = None) -> None:
    """One message: the header (with `dtype` and `shape` when an array follows), then the array's bytes."""
    fields = dict(header)
    payload: bytes | memoryview = b""
    if array is not None:
        name = np.dtype(array.dtype).name
        if name not in DTYPES:
            raise FramingError(f"arrays of {name} are not sent (only {sorted(DTYPES)})")
        contiguous = np.ascontiguousarray(array, dtype=DTYPES[name])
        fields["dtype"], fields["shape"] = name, list(contiguous.shape)
        # (numpy's stubs give ndarray the buffer protocol for Python >= 3.12 only)
        payload = contiguous.tobytes() if contiguous.nbytes < 65536 else memoryview(contiguous).cast("B")  # type: ignore[arg-type]
    data = json.dumps(fields, ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_HEADER_BYTES:
        raise FramingError(f"header of {len(data)} bytes is over {MAX_HEADER_BYTES}")
    stream.write(_LENGTH.pack(len(data)) + data)
    if array is not None:
        stream.write(payload)
    stream.flush()


def read_message(stream: IO[bytes]) -> tuple[dict[str, Any], np.ndarray | None]:
    """The next message as (header, array or None). EOFError at a clean end of the stream (between messages);
    FramingError for anything else that is not a well-formed message."""
    prefix = _read_exact(stream, _LENGTH.size, at_start=True)
    (length,) = _LENGTH.unpack(prefix)
    if length > MAX_HEADER_BYTES:
        raise FramingError(f"header length {length} is over {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_read_exact(stream, length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FramingError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FramingError("header is not a JSON object")
    if "dtype" not in header and "shape" not in header:
        return header, None
    dtype, shape = _array_spec(header)
    size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    buffer = bytearray(_read_exact(stream, size)) if size else bytearray()
    return header, np.frombuffer(buffer, dtype).reshape(shape)


def _array_spec(header: dict[str, Any]) -> tuple[np.dtype, tuple[int, ...]]:
    name, shape = header.get("dtype"), header.get("shape")
    if not isinstance(name, str) or name not in DTYPES:
        raise FramingError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise FramingError(f"shape {shape!r} is not a list of at most {MAX_DIMS} sizes")
    dtype = DTYPES[name]
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize > MAX_ARRAY_BYTES:
        raise FramingError(f"array of {count * dtype.itemsize} bytes is over {MAX_ARRAY_BYTES}")
    return dtype, tuple(shape)


def _read_exact(stream: IO[bytes], size: int, at_start: bool = False) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            if at_start and got == 0:
                raise EOFError("end of stream")
            raise FramingError(f"message cut short ({got} of {size} bytes)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------- worker side


class RemoteEngine:
    """One network of the model process behind the `Engine` signature, with `submit` for futures."""

    def __init__(self, process: ModelProcess, name: str) -> None:
        self.process = process
        self.name = name

    def submit(self, batch: np.ndarray) -> Future[np.ndarray]:
        return self.process.submit(self.name, batch)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return wait(self.submit(batch))


class ModelProcess:
    """The worker's handle on its model process: starts it, sends requests, restarts it when it dies."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None, command: tuple[str, ...] = COMMAND) -> None:
        self.settings = settings
        self.metrics = metrics
        self.command = command
        self.description: dict[str, Any] = {}
        self.restarts = 0
        self._lock = threading.Lock()  # the child, the pending futures; never held while blocked on a pipe
        self._write_lock = threading.Lock()  # one message at a time on the child's stdin
        self._child: subprocess.Popen[bytes] | None = None
        self._generation = 0
        self._pending: dict[int, Future[np.ndarray]] = {}
        self._ids = itertools.count()
        self._up = threading.Event()
        self._closed = threading.Event()
        self._down_since: float | None = time.monotonic()
        self._reason: str | None = "model process starting"

    # lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> ModelProcess:
        """Start the child and wait until its networks are loaded. Raises its configuration error (the same
        exception type and message as loading in-process) or SystemicError(model_process_died)."""
        self.description = self._spawn()
        return self

    def close(self) -> None:
        """Stop the child (its stdin closed: it exits; killed if it does not within 5 s); pending calls fail."""
        self._closed.set()
        self._up.set()  # wake waiting callers: they see the process is closed
        with self._lock:
            child, self._child = self._child, None
            pending, self._pending = self._pending, {}
        if child is not None:
            try:
                if child.stdin is not None:
                    child.stdin.close()
                child.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                child.kill()
                child.wait()
        self._fail(pending, "the model process was stopped")
        self._set_up(False)

    def problem(self) -> str | None:
        """Why the networks cannot run now (readiness), or None while the child is up."""
        return None if self._up.is_set() and not self._closed.is_set() else self._reason

    def down_for(self) -> float:
        """Seconds since the child went down (0 while it is up)."""
        down = self._down_since
        return 0.0 if down is None else time.monotonic() - down

    @property
    def pid(self) -> int | None:
        child = self._child
        return None if child is None else child.pid

    def tagger(self) -> VideoTagger:
        """The chain as the worker uses it: decoding and tag selection here, every network in the child."""
        from models.chain import Head, VideoTagger
        from models.config import ExtractorConfig
        from models.labels import TagControl

        d = self.description
        config: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d["extractor_config"].items()}
        heads = tuple(
            Head(
                h["name"],
                RemoteEngine(self, f"head:{h['name']}"),
                h["labels"],
                TagControl(
                    np.array(h["control"]["floors"], dtype=np.float64),
                    tuple(h["control"]["names"]),
                    tuple(h["control"]["groups"]),
                ),
                h["topk"],
                h["weights"],
            )
            for h in d["heads"]
        )
        return VideoTagger(
            ExtractorConfig(**config),
            RemoteEngine(self, "extractor"),
            heads,
            preprocess=d["preprocess"],
            batch_size=d["batch_size"],
            max_width=d["max_width"],
            max_height=d["max_height"],
            info=d["info"],
        )

    # requests --------------------------------------------------------------------------------------------

    def submit(self, engine: str, batch: np.ndarray) -> Future[np.ndarray]:
        """Send one batch to `engine`; the future gets its output, the engine's error, or model_process_died.
        While the child is being restarted this waits for it (a cancelled video stops waiting)."""
        future: Future[np.ndarray] = Future()
        while True:
            while not self._up.wait(CANCEL_POLL_S):
                cancel.check()
            if self._closed.is_set():
                raise SystemicError(ErrorCode.MODEL_PROCESS_DIED, "the model process was stopped")
            with self._lock:
                child = self._child
                if child is not None:
                    request_id = next(self._ids)
                    self._pending[request_id] = future
                    break
        try:
            assert child.stdin is not None
            with self._write_lock:
                write_message(child.stdin, {"id": request_id, "engine": engine}, batch)
        except (OSError, ValueError) as exc:  # the child is gone (broken pipe); its reader restarts it
            with self._lock:
                owned = self._pending.pop(request_id, None) is not None
            if owned:
                future.set_exception(
                    SystemicError(ErrorCode.MODEL_PROCESS_DIED, f"the model process died while sent a batch ({exc})")
                )
        return future

    # the child ---------------------------------------------------------------------------------------------

    def _spawn(self) -> dict[str, Any]:
        """Start a child and return its `ready` header. The child is started by a thread of its own that then
        reads its replies until it dies: PR_SET_PDEATHSIG kills a child when the thread that started it ends, so
        that thread must live exactly as long as its child (not end with a restart attempt or a caller)."""
        started: Future[dict[str, Any]] = Future()
        threading.Thread(target=self._own_child, args=(started,), name="model-process", daemon=True).start()
        return started.result()

    def _own_child(self, started: Future[dict[str, Any]]) -> None:
        try:
            child, generation, header = self._launch()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(header)
        self._read_replies(child, generation)

    def _launch(self) -> tuple[subprocess.Popen[bytes], int, dict[str, Any]]:
        child = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=model_environment(os.environ)
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            write_message(
                child.stdin, {"op": "start", "parent": os.getpid(), "settings": model_settings(self.settings)}
            )
            header, _ = read_message(child.stdout)
        except (EOFError, FramingError, OSError) as exc:
            _end(child)
            raise SystemicError(
                ErrorCode.MODEL_PROCESS_DIED,
                f"the model process died while loading ({exit_reason(child.returncode)}; {exc})",
            ) from None
        if header.get("status") != "ready":
            _end(child)
            if header.get("status") == "config_error":
                raise config_error(header)
            raise SystemicError(ErrorCode.MODEL_PROCESS_DIED, f"the model process answered {header.get('status')!r}")
        if self.description and _chain_of(header) != _chain_of(self.description):
            _end(child)  # the worker tags with the first one's labels and publishes its info
            raise SystemicError(
                ErrorCode.MODEL_PROCESS_DIED,
                "the restarted model process loaded another chain "
                "(weights or labels changed on disk): restart the worker",
            )
        with self._lock:
            if self._closed.is_set():  # closed while it loaded
                _end(child)
                raise SystemicError(ErrorCode.MODEL_PROCESS_DIED, "the model process was stopped")
            self._generation += 1
            generation = self._generation
            self._child = child
            self._down_since = None
            self._reason = None
            if generation > 1:  # counted before anyone can see it up again
                self.restarts += 1
                if self.metrics is not None:
                    self.metrics.model_process_restarts.inc()
        self._up.set()
        self._set_up(True)
        log.info("model process %d ready", child.pid)
        return child, generation, header

    def _read_replies(self, child: subprocess.Popen[bytes], generation: int) -> None:
        assert child.stdout is not None
        try:
            while True:
                header, array = read_message(child.stdout)
                with self._lock:
                    future = self._pending.pop(header.get("id"), None)  # type: ignore[arg-type]
                if future is not None:
                    _resolve(future, header, array)
        except (EOFError, FramingError, OSError) as exc:
            self._died(child, generation, exc)

    def _died(self, child: subprocess.Popen[bytes], generation: int, cause: BaseException) -> None:
        _end(child)
        with self._lock:
            if self._closed.is_set() or generation != self._generation:
                return
            self._up.clear()
            self._child = None
            pending, self._pending = self._pending, {}
            self._down_since = time.monotonic()
            how = exit_reason(child.returncode)
            if isinstance(cause, FramingError):
                how += f", after a malformed reply: {cause}"
            self._reason = f"model process died ({how}); restarting it"
        self._set_up(False)
        log.error("model process %d died (%s) with %d batches in flight: restarting it", child.pid, how, len(pending))
        self._fail(pending, f"the model process died ({how})")
        threading.Thread(target=self._restart, name="model-restart", daemon=True).start()

    def _restart(self) -> None:
        """Start a new child, with exponential backoff (the retry settings) between failed starts."""
        s = self.settings
        attempts = 0
        while not self._closed.is_set():
            attempts += 1
            if self._closed.wait(min(s.retry_backoff_max_s, s.retry_backoff_base_s * 2 ** min(attempts - 1, 16))):
                return
            try:
                self._spawn()
            except Exception as exc:  # a configuration error too: it may be fixed (a volume remounted)
                self._reason = f"model process down: restart {attempts} failed ({str(exc)[:200]})"
                log.error("model process restart %d failed: %s", attempts, exc)
                continue
            log.warning("model process restarted (attempt %d)", attempts)
            return

    def _fail(self, pending: dict[int, Future[np.ndarray]], why: str) -> None:
        for future in pending.values():
            future.set_exception(SystemicError(ErrorCode.MODEL_PROCESS_DIED, why))

    def _set_up(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.model_process_up.set(1 if up else 0)


def _end(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait()


def _chain_of(description: Mapping[str, Any]) -> dict[str, Any]:
    """A `ready` description without what differs from one start to the next."""
    return {key: value for key, value in description.items() if key != "pid"}


def _resolve(future: Future[np.ndarray], header: dict[str, Any], array: np.ndarray | None) -> None:
    status = header.get("status")
    if status == "ok" and array is not None:
        future.set_result(array)
    elif status == "coded":
        kind = SystemicError if header.get("error") == "systemic" else InputError
        try:
            future.set_exception(kind(str(header.get("code")), str(header.get("message"))))
        except ValueError:  # not a code of ours
            future.set_exception(RuntimeError(f"model process: {header.get('message')}"))
    else:  # the engine failed on this batch: what the same failure in-process raises (internal_error)
        future.set_exception(RuntimeError(f"model process: {header.get('message')}"))


def model_settings(settings: Settings) -> dict[str, Any]:
    """The settings the child loads the chain from (JSON-able; heads as mappings)."""
    values = {name: getattr(settings, name) for name in MODEL_SETTINGS}
    values["predictors"] = [dataclasses.asdict(head) for head in settings.predictors]
    return values


def model_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: the worker's (Paddle's and CUDA's variables count) without credentials or settings
    (it is told those it needs), but with the directory of the hyper-parameter files, which both must read alike."""
    return {
        name: value for name, value in parent.items() if name == CONFIG_DIR_ENV or not name.startswith(_ENV_DROPPED)
    }


def config_error(header: Mapping[str, Any]) -> Exception:
    """The child's configuration error as the exception loading in-process raises (cli.py reports it)."""
    from models.inference import EngineOptionsError
    from models.labels import LabelsError
    from models.weights import WeightsError
    from worker.settings import SettingsError

    kinds: dict[str, type[Exception]] = {
        "WeightsError": WeightsError,
        "LabelsError": LabelsError,
        "SettingsError": SettingsError,
        "EngineOptionsError": EngineOptionsError,
    }
    return kinds.get(str(header.get("error")), ConfigError)(str(header.get("message")))


# ---------------------------------------------------------------------------------------------- child side


def describe(tagger: VideoTagger) -> dict[str, Any]:
    """What the worker needs of the loaded chain to tag without the networks (the `ready` message)."""
    return {
        "status": "ready",
        "pid": os.getpid(),
        "info": tagger.info,
        "extractor_config": dataclasses.asdict(tagger.extractor_config),
        "preprocess": tagger.preprocess,
        "batch_size": tagger.batch_size,
        "max_width": tagger.max_width,
        "max_height": tagger.max_height,
        "heads": [
            {
                "name": head.name,
                "labels": head.labels,
                "topk": head.topk,
                "weights": head.weights,
                "control": {
                    "floors": head.control.floors.tolist(),
                    "names": list(head.control.names),
                    "groups": list(head.control.groups),
                },
            }
            for head in tagger.heads
        ],
    }


def serve(tagger: VideoTagger, requests: IO[bytes], replies: IO[bytes], max_batch: int) -> None:
    """Answer requests until `requests` ends: each batch goes to the model thread at once (merged with the
    other videos' batches there), each reply is written when its batch is done."""
    from worker.pipeline import ModelThread

    engines = {"extractor": tagger.extractor, **{f"head:{head.name}": head.predictor for head in tagger.heads}}
    model_thread = ModelThread(max_batch).start()
    write_lock = threading.Lock()

    def reply(request_id: Any, future: Future[np.ndarray]) -> None:
        error = future.exception()
        header: dict[str, Any] = {"id": request_id, "status": "ok"}
        output = None
        if error is None:
            output = future.result()
        elif isinstance(error, CodedError):
            header |= {
                "status": "coded",
                "error": "systemic" if isinstance(error, SystemicError) else "input",
                "code": error.code.value,
                "message": error.message,
            }
        else:
            header |= {"status": "error", "message": f"{type(error).__name__}: {str(error)[:500]}"}
        with write_lock:
            write_message(replies, header, output)

    while True:
        try:
            header, batch = read_message(requests)
        except EOFError:
            return
        request_id = header.get("id")
        engine = engines.get(str(header.get("engine")))
        if engine is None or batch is None:
            with write_lock:
                write_message(
                    replies,
                    {"id": request_id, "status": "error", "message": f"no engine {header.get('engine')!r} or no batch"},
                )
            continue
        future = model_thread.submit(engine, batch)
        future.add_done_callback(functools.partial(reply, request_id))


def main() -> None:
    """The child: the start message on stdin, `ready` (or `config_error`) on the reply channel, then serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the worker decides
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what a library prints goes to the worker's log, never into the replies
    requests = sys.stdin.buffer
    start, _ = read_message(requests)
    if _LINUX:
        die_with_parent(int(start["parent"]))
    from worker.chain_builder import load_tagger
    from worker.settings import load_settings

    settings_values = start["settings"]
    logging.basicConfig(
        level=str(settings_values.get("log_level", "INFO")).upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[model %(process)d]: %(message)s",
    )
    try:
        settings = load_settings(env={}, overrides=settings_values)
        tagger = load_tagger(settings)
    except ConfigError as exc:
        write_message(replies, {"status": "config_error", "error": type(exc).__name__, "message": str(exc)})
        replies.close()
        os._exit(2)
    write_message(replies, describe(tagger))
    serve(tagger, requests, replies, settings.batch_size)
    replies.close()
    os._exit(0)  # the worker closed the pipe: nobody waits for anything still queued


if __name__ == "__main__":
    main()
