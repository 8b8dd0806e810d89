"""Benchmark: `bngap check` against two plain forward passes, side by side.

Time and peak memory of `check` on a model and batch, relative to one plain
`model(x, training=True)` and one `model(x, training=False)` call of the same
model on the same data. Each variant runs in its own process, so peak RSS is
its own; every variant builds the model the same way and warms up on the same
shapes before timing.

    python benchmarks/bench_check.py                  # ResNet50, 224x224, batch 32
    python benchmarks/bench_check.py --quick          # ResNet50, 64x64 (a smoke run)
    python benchmarks/bench_check.py --memory-scaling # peak memory at 1x and 10x samples
    python benchmarks/bench_check.py --json out.json

Also measures the GapMonitor callback's overhead on a small fit().
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(args) -> dict:
    """Runs one variant in this process and returns its numbers."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from bngap.runtime import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(args.size, args.size, 3), classes=10)
    x = np.random.default_rng(0).uniform(0, 255, (args.samples, args.size, args.size, 3)).astype("float32")
    saved = [v.numpy() for v in model.non_trainable_variables]

    def restore():
        for v, s in zip(model.non_trainable_variables, saved):
            v.assign(s)

    batch = x[: args.batch]
    out = {"variant": args.variant, "size": args.size, "batch": args.batch, "samples": args.samples,
           "baseline_rss_mb": _rss_mb()}  # model built, data made, nothing run yet
    if args.variant == "plain":
        for _ in range(2):  # warm-up on the timed shapes
            model(batch, training=False)
            model(batch, training=True)
            restore()
        t0 = time.perf_counter()
        for s in range(0, args.samples, args.batch):
            model(x[s:s + args.batch], training=False)
        t1 = time.perf_counter()
        for s in range(0, args.samples, args.batch):
            model(x[s:s + args.batch], training=True)
        t2 = time.perf_counter()
        restore()
        out.update(eval_s=t1 - t0, train_s=t2 - t1, seconds=t2 - t0)
    else:
        from bngap.pipeline import CheckOptions, check

        effects = None if args.effects == "all" else (args.effects if args.effects == "auto" else int(args.effects))
        for _ in range(2):
            model(batch, training=False)
            model(batch, training=True)
            restore()
        check(model, batch[:4], options=CheckOptions(batch_size=args.batch, effects=0))  # warm bngap's ops
        t0 = time.perf_counter()
        report = check(model, x, options=CheckOptions(batch_size=args.batch, effects=effects))
        out["seconds"] = time.perf_counter() - t0
        out["effects"] = args.effects
        out["gap"] = report.output_gap.relative_l2
    out["peak_rss_mb"] = _rss_mb()
    return out


def run_variant(**kw) -> dict:
    cmd = [sys.executable, __file__, "--child"]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"variant {kw} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def callback_overhead() -> dict:
    """fit() of a small BN model on 8192 samples, with and without GapMonitor (every epoch)."""
    code = r"""
import os, time, json, numpy as np
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import bngap
from bngap.runtime import import_keras
keras = import_keras()
L = keras.layers
rng = np.random.default_rng(0)
x = rng.normal(0, 1, (8192, 16, 16, 3)).astype("float32"); y = rng.integers(0, 3, 8192)
def run(cb):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(16, 3), L.BatchNormalization(), L.ReLU(),
                          L.Conv2D(16, 3), L.BatchNormalization(), L.ReLU(), L.GlobalAveragePooling2D(), L.Dense(3)])
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x[:64], y[:64], epochs=1, verbose=0)  # warm-up
    t = time.perf_counter(); m.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=cb); return time.perf_counter() - t
plain = run([]); watched = run([bngap.GapMonitor(x[:64], verbose=False)])
print(json.dumps({"fit_s": plain, "fit_with_monitor_s": watched, "ratio": watched / plain,
                  "per_epoch_overhead_s": (watched - plain) / 5}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"callback benchmark failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="plain")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--effects", default="auto")
    p.add_argument("--quick", action="store_true", help="64x64 images: a fast smoke run")
    p.add_argument("--memory-scaling", action="store_true", help="peak memory at 1x and 10x samples")
    p.add_argument("--no-callback", action="store_true", help="skip the GapMonitor overhead run")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    if args.child:
        args.samples = args.samples or args.batch
        print(json.dumps(child(args)))
        return
    size = 64 if args.quick else args.size
    samples = args.samples or args.batch
    results: dict = {"model": "ResNet50(weights=None)", "size": size, "batch": args.batch, "samples": samples}
    plain = run_variant(variant="plain", size=size, batch=args.batch, samples=samples)
    rows = [("two plain passes (eval + train)", plain)]
    for eff in ("0", "auto", "3"):
        rows.append((f"bngap check --effects {eff}", run_variant(variant="check", size=size, batch=args.batch,
                                                                   samples=samples, effects=eff)))
    print(f"ResNet50 (weights=None), {size}x{size}, batch {args.batch}, {samples} samples, "
          f"{os.cpu_count()} CPU cores; each variant in its own process")
    print(f"{'variant':36} {'seconds':>8} {'x time':>7} {'peak MB':>8} {'x peak':>7} {'x growth':>8}")
    print("(x growth: peak memory above the process's size after building the model, relative to the plain passes')")
    base_growth = plain["peak_rss_mb"] - plain["baseline_rss_mb"]
    out_rows = []
    for name, r in rows:
        growth = r["peak_rss_mb"] - r["baseline_rss_mb"]
        row = {"variant": name, "seconds": r["seconds"], "time_ratio": r["seconds"] / plain["seconds"],
               "peak_rss_mb": r["peak_rss_mb"], "peak_ratio": r["peak_rss_mb"] / plain["peak_rss_mb"],
               "baseline_rss_mb": r["baseline_rss_mb"],
               "growth_ratio": growth / base_growth if base_growth > 0 else None}
        out_rows.append(row)
        print(f"{name:36} {row['seconds']:8.2f} {row['time_ratio']:7.2f} {row['peak_rss_mb']:8.0f} "
              f"{row['peak_ratio']:7.2f} {row['growth_ratio'] if row['growth_ratio'] is None else format(row['growth_ratio'], '8.2f')}")
    results["rows"] = out_rows
    if args.memory_scaling:
        small = 32 if args.quick else 64
        print(f"\npeak memory of check as the data grows ({small}x{small} images, batch {args.batch}):")
        scaling = []
        for n in (args.batch * 2, args.batch * 20):
            r = run_variant(variant="check", size=small, batch=args.batch, samples=n, effects="0")
            scaling.append({"samples": n, "peak_rss_mb": r["peak_rss_mb"], "seconds": r["seconds"]})
            print(f"  {n:6d} samples: peak {r['peak_rss_mb']:.0f} MB, {r['seconds']:.1f} s")
        results["memory_scaling"] = scaling
        print(f"  10x the samples: {scaling[1]['peak_rss_mb'] / scaling[0]['peak_rss_mb']:.2f}x the peak memory")
    if not args.no_callback:
        cb = callback_overhead()
        results["callback"] = cb
        print(f"\nGapMonitor on 64 samples every epoch, fit() of 8192 samples x 5 epochs: "
              f"{cb['fit_s']:.2f} s without, {cb['fit_with_monitor_s']:.2f} s with ({cb['ratio']:.2f}x; "
              f"{1000 * cb['per_epoch_overhead_s']:.0f} ms per epoch, first-epoch tracing included)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
