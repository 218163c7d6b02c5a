"""The Python steps of deploy/gpu-check.sh: for anyone with a GPU and paddlepaddle-gpu (not run here: no GPU
machine lent to this project can install Paddle).

- `preflight`: exit 2, with the reason, unless Paddle is a CUDA build and sees a GPU (and, for TensorRT, was
  built with it);
- `agreement`: fp32 (TF32 off) against fp16 + TensorRT on the same frames: features |Δ|, probabilities |Δ|,
  top-20 overlap per video; fails below MIN_OVERLAP;
- `throughput`: extractor images/s at each batch size (fp16 + TensorRT, converted once for the largest).

The decisions (what counts as agreement, how img/s is timed) are plain functions, tested on the CPU with the
simulated engine (tests/test_gpucheck.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.engines import Engine

MIN_OVERLAP = 18  # of 20: what docs/performance.md asks of the non-faithful modes (bf16, fast)
EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def preflight_problem(tensorrt: bool = True) -> str | None:
    """Why this machine cannot run the GPU check, or None."""
    import paddle

    if not paddle.is_compiled_with_cuda():
        return f"paddle {paddle.__version__} is not a CUDA build: install paddlepaddle-gpu (deploy/Dockerfile.gpu)"
    if paddle.device.cuda.device_count() < 1:
        return "paddlepaddle-gpu sees no GPU (driver, CUDA_VISIBLE_DEVICES, the container's GPU request)"
    if tensorrt:
        from models.inference import EngineOptionsError, check_options

        try:
            check_options("gpu", "fp16", tensorrt=True)
        except EngineOptionsError as exc:
            return str(exc)
    return None


def compare(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Per video: max |Δ| of features and probabilities, top-20 overlap and order; `ok` when every video keeps
    at least MIN_OVERLAP of its reference top 20."""
    videos = {}
    for name, ref in reference.items():
        got = other[name]
        ref_top, got_top = ref["top20"], got["top20"]
        videos[name] = {
            "features_max_abs": float(np.abs(ref["features"] - got["features"]).max()),
            "probabilities_max_abs": float(np.abs(ref["probabilities"] - got["probabilities"]).max()),
            "top20_overlap": len(set(ref_top) & set(got_top)),
            "same_order": ref_top == got_top,
        }
    return {"videos": videos, "ok": all(v["top20_overlap"] >= MIN_OVERLAP for v in videos.values())}


def images_per_second(engine: Engine, batch: int, seconds: float, image_size: int = 224) -> dict[str, float]:
    """Extractor images/s at `batch` on random frames: one warm-up run, then runs for at least `seconds`
    (and at least three), each ending with its output on the host (so the GPU's work is finished)."""
    frames = np.random.default_rng(0).standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    engine(frames)
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        engine(frames)
        runs += 1
    wall = time.perf_counter() - start
    return {"batch": batch, "runs": runs, "wall_s": round(wall, 3), "images_per_s": round(runs * batch / wall, 1)}


def _outputs(settings_overrides: dict[str, Any], videos: list[Path]) -> dict[str, Any]:
    from worker.chain_builder import load_tagger
    from worker.settings import load_settings

    tagger = load_tagger(load_settings(overrides=settings_overrides))
    out = {}
    for path in videos:
        result = tagger.tag(path)
        out[path.name] = {
            "features": result.features,
            "probabilities": result.probabilities[tagger.heads[0].name],
            "top20": [t["class_id"] for t in result.tags][:20],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.local.gpucheck")
    parser.add_argument("step", choices=["preflight", "agreement", "throughput"])
    parser.add_argument("--weights", type=Path, help="directory with tsn.* and attention_lstm.*")
    parser.add_argument("--label-file", default="../shared/label_3396.txt")
    parser.add_argument("--videos", nargs="*", type=Path, default=[])
    parser.add_argument("--seg-num", type=int, default=32)
    parser.add_argument("--batches", nargs="*", type=int, default=[64, 128, 256])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cache-dir", default=".cache/videotag/models")
    args = parser.parse_args(argv)
    if args.step == "preflight":
        problem = preflight_problem()
        if problem:
            print(f"gpu-check: {problem}", file=sys.stderr)
            return EXIT_REFUSED
        import paddle

        print(
            f"gpu-check: {paddle.device.cuda.get_device_name()}, paddle {paddle.__version__}, TensorRT "
            f"{'.'.join(map(str, paddle.inference.get_trt_runtime_version()))}"
        )
        return EXIT_OK
    common = {
        "extractor_weights": str(args.weights / "tsn"),
        "predictor_weights": str(args.weights / "attention_lstm"),
        "label_file": args.label_file,
        "seg_num": args.seg_num,
        "device": "gpu",
        "engine": "inference",
        "model_cache_dir": args.cache_dir,
    }
    if args.step == "agreement":
        reference = _outputs({**common, "precision": "fp32"}, args.videos)
        fast = _outputs({**common, "precision": "fp16", "tensorrt": True}, args.videos)
        report = compare(reference, fast)
        print(json.dumps(report, indent=1))
        return EXIT_OK if report["ok"] else EXIT_FAILED
    from worker.chain_builder import load_tagger
    from worker.settings import load_settings

    tagger = load_tagger(
        load_settings(overrides={**common, "precision": "fp16", "tensorrt": True, "batch_size": max(args.batches)}),
        with_heads=False,
    )
    for batch in args.batches:
        print(json.dumps(images_per_second(tagger.extractor, batch, args.seconds)), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
