"""What loading the weight files derives, cached in the model cache directory: their sha256 digests, and a
head's tensors as plain arrays, so that a start after the first reads neither the pickles nor every byte.

Why: an original `.pdparams` is a protocol-2 pickle that stores each tensor's bytes as text, decoded and
re-encoded on every load (2.0 s for the AttentionLSTM's 386 MB on the 2-core reference machine, single-threaded
and holding the GIL), and hashing the weight files takes 0.9 s more. From here a start takes ~0.2 s for both.

Invariants:
- The key is each file's identity as the filesystem reports it now: device, inode, size, modification and
  change time (ns). Writing to a file, or replacing it, sets its change time, which no user tool can set
  back, so an edited or replaced file is never answered from here: it misses, is read and cached again.
- An entry is written to a temporary sibling and renamed: a reader sees a whole entry or none. An entry that
  cannot be read is a miss; a directory that cannot be written only makes starts slower (a warning).
- Arrays are stored by `np.savez` and read with `allow_pickle=False`: nothing here is unpickled.
- Without a cache directory (`cache_dir=None`) both functions read the files, as `models/weights.py` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from models.weights import file_digests, find_params, read_state

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what an entry holds changes: older entries then miss
FROM_OPT = "__from_opt__"  # the npz member naming the tensors that came from `.pdopt` (no weight has this name)


def signature(paths: Sequence[Path]) -> str:
    """A key for these files, in this order, as they are now (see the module's invariants)."""
    identity = []
    for path in paths:
        st = path.stat()
        identity.append([st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    return hashlib.sha256(json.dumps([FORMAT, identity]).encode()).hexdigest()[:32]


def digests(paths: Sequence[Path], cache_dir: Path | None) -> tuple[str, dict[Path, str]]:
    """`models.weights.file_digests(paths)`, from the cache when these files were hashed before."""
    if cache_dir is None:
        return file_digests(paths)
    entry = cache_dir / "digests" / f"{signature(paths)}.json"
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        return str(data["whole"]), {path: str(data["each"][str(path)]) for path in paths}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    whole, each = file_digests(paths)
    text = json.dumps({"whole": whole, "each": {str(path): digest for path, digest in each.items()}})
    _write(entry, lambda f: f.write(text.encode()))
    return whole, each


def state(location: str | Path, stem: str, cache_dir: Path | None) -> tuple[dict[str, np.ndarray], set[str], Path]:
    """`models.weights.read_state(location, stem)`, from the cache when these files were read before."""
    if cache_dir is None:
        return read_state(location, stem)
    params_path = find_params(location, stem)
    opt_path = params_path.with_suffix(".pdopt")
    entry = cache_dir / "state" / f"{signature([params_path, opt_path] if opt_path.is_file() else [params_path])}.npz"
    try:
        with np.load(entry, allow_pickle=False) as stored:
            tensors = {name: stored[name] for name in stored.files if name != FROM_OPT}
            return tensors, {str(name) for name in stored[FROM_OPT]}, params_path
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # none yet, or unreadable: read the files
        pass
    tensors, from_opt, params_path = read_state(location, stem)
    arrays = {**tensors, FROM_OPT: np.array(sorted(from_opt), dtype=str)}
    _write(entry, lambda f: np.savez(f, allow_pickle=False, **arrays))
    return tensors, from_opt, params_path


def _write(entry: Path, write: Callable[[IO[bytes]], object]) -> None:
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            write(f)
        os.replace(tmp, entry)
    except OSError as exc:
        log.warning("could not cache %s (starts stay slower): %s", entry, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
