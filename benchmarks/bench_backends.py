"""Benchmark: `bngap check` against two plain forward passes, on each Keras backend.

For every installed backend (TensorFlow, JAX, PyTorch) and every variant
(`plain`: one `model(x, training=False)` and one `model(x, training=True)`
pass over the data, eager, under `torch.no_grad()` on PyTorch; `check`:
`bngap.pipeline.check(model, x)` at the default settings), this script runs
itself again in a process of its own with `KERAS_BACKEND` set, builds the
same model from the same seed, warms up one call per mode, and times the
variant. Ratios are check over plain of the same backend, measured side by
side in one run: each backend against its own floor.

    python benchmarks/bench_backends.py                  # ResNet50, 64x64, batch 32, 32 samples
    python benchmarks/bench_backends.py --size 32 --model small --json out.json

Target: no backend's check above 2x its own two plain passes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")


def _peak_rss_mb() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / (1024.0 * 1024.0) if sys.platform == "darwin" else ru / 1024.0


def _build(keras, name: str, size: int):
    if name == "resnet50":
        return keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=10)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            L.Conv2D(32, 3),
            L.BatchNormalization(),
            L.ReLU(),
            L.Conv2D(64, 3, strides=2),
            L.BatchNormalization(),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dropout(0.2),
            L.Dense(10),
        ],
        name="small",
    )


def child(args) -> dict:
    """One variant on the backend of KERAS_BACKEND, in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)
    model = _build(keras, args.model, args.size)
    x = (
        np.random.default_rng(0)
        .uniform(0, 255, (args.samples, args.size, args.size, 3))
        .astype("float32")
    )
    saved = [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.non_trainable_variables]

    def restore():  # training-mode calls move the BN statistics: keep every run on the same model
        for v, s in zip(model.non_trainable_variables, saved):
            v.assign(s)

    if backend == "torch":
        import torch

        no_grad = torch.no_grad
    else:
        import contextlib

        no_grad = contextlib.nullcontext
    out = {
        "backend": backend,
        "variant": args.variant,
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "samples": args.samples,
    }
    with no_grad():  # warm-up, the same in both variants: the first call of each mode is slow
        model(x[: args.batch], training=False)
        model(x[: args.batch], training=True)
    restore()
    times = []
    for _ in range(args.repeat):  # the fastest of a few: a shared machine adds noise, never speed
        if args.variant == "plain":
            t0 = time.perf_counter()
            with no_grad():
                for s in range(0, args.samples, args.batch):
                    model(x[s : s + args.batch], training=False)
                for s in range(0, args.samples, args.batch):
                    model(x[s : s + args.batch], training=True)
            times.append(time.perf_counter() - t0)
            restore()
        else:
            from bngap.pipeline import CheckOptions, check

            t0 = time.perf_counter()
            report = check(model, x, options=CheckOptions(batch_size=args.batch))
            times.append(time.perf_counter() - t0)
            out["gap"] = report.output_gap.relative_l2
    out["seconds"] = min(times)
    out["all_seconds"] = times
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def run(args, backend: str, variant: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--variant",
        variant,
        "--model",
        args.model,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--samples",
        str(args.samples),
        "--repeat",
        str(args.repeat),
    ]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        return {"backend": backend, "variant": variant, "error": tail[0][:200]}
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=["plain", "check"], default="plain", help=argparse.SUPPRESS)
    p.add_argument("--model", choices=["resnet50", "small"], default="resnet50")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument(
        "--repeat", type=int, default=3, help="time each variant this many times, keep the fastest"
    )
    p.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma list (default: every installed one)"
    )
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args()
    if args.child:
        sys.stdout.write(json.dumps(child(args)) + "\n")
        return
    backends = [b for b in args.backends.split(",") if importlib.util.find_spec(b) is not None]
    print(
        f"{args.model} (weights=None), {args.size}x{args.size}, {args.samples} samples, "
        f"batch {args.batch}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    results = []
    print(f"{'backend':<12}{'plain s':>10}{'check s':>10}{'ratio':>8}{'check peak MB':>15}")
    for b in backends:
        plain, chk = run(args, b, "plain"), run(args, b, "check")
        results += [plain, chk]
        if "error" in plain or "error" in chk:
            print(f"{b:<12}error: {plain.get('error') or chk.get('error')}")
            continue
        print(
            f"{b:<12}{plain['seconds']:>10.2f}{chk['seconds']:>10.2f}"
            f"{chk['seconds'] / plain['seconds']:>7.2f}x{chk['peak_rss_mb']:>15.0f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
