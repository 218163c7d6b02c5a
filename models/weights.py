"""Loading the original `fluid.save` weight files into the networks, strictly.

`prefix.pdparams` is a (Python 2 era) pickle of `{name: ndarray}` with every Parameter — BatchNorm moving
statistics included in fluid 1.8 — and `prefix.pdopt` holds optimizer state. A prefix or a directory
is accepted; anything missing from `.pdparams` is taken from `.pdopt` when present. `save_params` writes
the same layout (heads trained by `videotag train`), so one strict loader reads both.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import paddle

from models.errors import ConfigError

# Names in the TSN file that the extractor has no use for: the Kinetics classifier of the pre-training.
IGNORED_PREFIXES = ("fc_0.",)
HOW_TO_GET = (
    "get the original VideoTag weights with `videotag weights download` "
    "(or pass --allow-random-weights for a demo with untrained weights)"
)


class WeightsError(ConfigError):
    """Weight files are missing or do not fit the network."""


def find_params(location: str | Path, stem: str) -> Path:
    """The `.pdparams` file for a prefix (`weights/tsn`), a file, or a directory holding `<stem>.pdparams`."""
    location = Path(location)
    candidates = [location] if location.suffix == ".pdparams" else [Path(f"{location}.pdparams")]
    if location.is_dir():
        candidates += sorted(location.rglob(f"{stem}.pdparams"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise WeightsError(f"no {stem}.pdparams at {location}: {HOW_TO_GET}")


def _unpickle(path: Path) -> dict[str, np.ndarray]:
    try:
        with path.open("rb") as f:
            data = pickle.load(f, encoding="latin1")
    except Exception as exc:  # a truncated or foreign file: say which one
        raise WeightsError(f"{path}: not a readable fluid.save pickle ({exc})") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return {str(k): v for k, v in data.items() if isinstance(v, np.ndarray)}


def read_state(location: str | Path, stem: str) -> tuple[dict[str, np.ndarray], set[str], Path]:
    """(tensors, names taken from `.pdopt`, `.pdparams` path): `.pdparams` merged with `.pdopt` for the
    names it lacks, the known-unused names dropped."""
    params_path = find_params(location, stem)
    state = _unpickle(params_path)
    from_opt: set[str] = set()
    opt_path = params_path.with_suffix(".pdopt")
    if opt_path.is_file():
        for name, value in _unpickle(opt_path).items():
            if name not in state:
                state[name] = value
                from_opt.add(name)
    kept = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    return kept, from_opt, params_path


def check_state(
    state: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], source: str, optional: Iterable[str] = ()
) -> None:
    """One error naming every missing, mismatched and unexpected tensor, so a bad file is fixed in one go."""
    missing = sorted(set(expected) - set(state))
    mismatched = sorted(
        f"{name}: file {tuple(state[name].shape)} != model {shape}"
        for name, shape in expected.items()
        if name in state and tuple(state[name].shape) != tuple(shape)
    )
    unexpected = sorted(set(state) - set(expected) - set(optional))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing)}")
    if mismatched:
        problems.append(f"mismatched {len(mismatched)}: {'; '.join(mismatched)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(unexpected)}")
    if problems:
        raise WeightsError(f"{source} does not fit the network — " + " | ".join(problems))


def expected_shapes(model: paddle.nn.Layer) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in original_parameters(model)}


def original_parameters(model: paddle.nn.Layer) -> Iterator[tuple[str, paddle.Tensor]]:
    # Defined by the networks that load original weights (resnet.py, attention_lstm.py); Layer's __getattr__ is Any.
    params: Iterator[tuple[str, paddle.Tensor]] = model.original_parameters()
    return params


@contextlib.contextmanager
def no_random_init() -> Iterator[None]:
    """Layers built inside get zero parameters, not random ones: for a layer whose every parameter `assign`
    then sets from a file. Paddle's default (Xavier) initialisation draws every value at random: 1.8 s of a
    model start for the AttentionLSTM's 96 M parameters, measured on this 2-core machine under load."""
    zero = paddle.nn.initializer.Constant(0.0)
    paddle.nn.initializer.set_global_initializer(zero, zero)
    try:
        yield
    finally:
        paddle.nn.initializer.set_global_initializer(None)


def load_into(model: paddle.nn.Layer, location: str | Path, stem: str) -> Path:
    """Check and copy the original tensors into `model`; returns the `.pdparams` path that was read.

    Optimizer state found in `.pdopt` is tolerated; an unknown name in `.pdparams` is an error.
    """
    state, from_opt, params_path = read_state(location, stem)
    assign(model, state, str(params_path), optional=from_opt)
    return params_path


def assign(model: paddle.nn.Layer, state: dict[str, np.ndarray], source: str, optional: Iterable[str] = ()) -> None:
    """Copy `state` into `model` after `check_state` (every name and shape, nothing unexpected)."""
    check_state(state, expected_shapes(model), source, optional=optional)
    for name, tensor in original_parameters(model):
        tensor.set_value(state[name].astype(np.float32, copy=False))


def save_params(model: paddle.nn.Layer, path: Path) -> Path:
    """Write `model` as `fluid.save` did: a protocol-2 pickle of {original name: float32 ndarray}.

    Written to a temporary sibling and renamed, so a reader never sees half a file.
    """
    state = {name: tensor.numpy().astype(np.float32) for name, tensor in original_parameters(model)}
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        pickle.dump(state, f, protocol=2)
    tmp.replace(path)
    return path


def file_digests(paths: Sequence[Path]) -> tuple[str, dict[Path, str]]:
    """sha256 over the weight files' bytes, in order (names the chain's weights in results), and each file's own
    (the extractor's keys its export, a head's names it in results), in one read of each file. hashlib releases
    the GIL, so a thread can hash while another loads."""
    whole = hashlib.sha256()
    each: dict[Path, str] = {}
    for path in paths:
        own = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                whole.update(chunk)
                own.update(chunk)
        each[path] = own.hexdigest()
    return whole.hexdigest(), each


def randomize(model: paddle.nn.Layer, seed: int) -> None:
    """Seeded untrained weights, scaled so activations stay finite through 101 layers (demos only)."""
    rng = np.random.default_rng(seed)
    for name, tensor in original_parameters(model):
        shape = tuple(tensor.shape)
        if name.endswith("_variance"):
            value = np.ones(shape)
        elif name.endswith(("_mean", "_offset", ".b_0")):
            value = rng.normal(0.0, 0.02, shape)
        elif name.endswith("_scale"):
            value = np.full(shape, 0.2 if "branch2c" in name else 1.0)
        else:  # conv weights [out, in, k, k] and fc weights [in, out]
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
            value = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        tensor.set_value(value.astype(np.float32))
