"""Benchmark: `bngap check` against two plain forward passes, side by side.

Wall time and peak memory of `bngap.pipeline.check(model, x)` relative to one
plain `model(x, training=True)` and one `model(x, training=False)` call (eager)
of the same model on the same data. Every variant runs in its own process
(this script again, with `--variant plain|check`), builds the model the same
way, warms up on the same shapes, and reports its own peak RSS
(`getrusage(RUSAGE_SELF).ru_maxrss` at the end) next to its baseline RSS
(after importing TensorFlow, building the model and making the data). Model
building and imports are not timed.

    python benchmarks/bench_check.py                 # ResNet50, 224x224, batch 32
    python benchmarks/bench_check.py --quick         # ResNet50, 64x64: a smoke run
    python benchmarks/bench_check.py --size 128 --batch 16 --samples 64 --json out.json

Also: peak memory of `check` at 1x and 10x the samples (small images), which
stays flat when the data are streamed batch by batch; the time each stage of
`check` takes; and (optional) the GapMonitor callback's overhead on a fit().

Target: `check` at most 3x the time and 1.5x the peak memory of the two plain
passes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections import defaultdict


def _peak_rss_mb() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / (1024.0 * 1024.0) if sys.platform == "darwin" else ru / 1024.0  # bytes on macOS, KiB on Linux


def _current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _effects(value: str):
    return None if value == "all" else value if value == "auto" else int(value)


def _stage_timers():
    """Wraps bngap's passes and stages with timers: (seconds, calls) by name."""
    import bngap.measurement as measurement
    import bngap.preprocessing as preprocessing
    from bngap.probe import Probe, StateGuard

    spent: dict = defaultdict(float)
    calls: dict = defaultdict(int)

    def timed(owner, attr, label):
        fn = getattr(owner, attr)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t
                calls[label] += 1

        setattr(owner, attr, wrapper)

    for attr in ("eval_pass", "train_pass", "masked_pass", "observe_pass", "forced_eval_pass",
                 "predict", "first_bn_moments"):
        timed(Probe, attr, f"pass: {attr}")
    timed(Probe, "__enter__", "probe set-up (wrappers, variable snapshot)")
    timed(Probe, "__exit__", "probe tear-down (restore variables)")
    timed(StateGuard, "restore", "  of which: variable restores")
    timed(measurement, "measure", "measure() total")
    timed(measurement, "compare_inference_paths", "  inference-path comparisons")
    timed(preprocessing, "probe_input_transforms", "preprocessing probe total")
    return spent, calls


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

    def restore():  # training-mode calls move the BN statistics: keep every run on the same model
        for v, s in zip(model.non_trainable_variables, saved):
            v.assign(s)

    batch = x[: args.batch]
    out = {"variant": args.variant, "size": args.size, "batch": args.batch, "samples": args.samples,
           "baseline_rss_mb": _peak_rss_mb(), "baseline_current_rss_mb": _current_rss_mb()}
    # Warm-up, the same in both variants: the first call of each mode is much slower.
    model(batch, training=False)
    model(batch, training=True)
    restore()
    if args.variant == "plain":
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

        # Warms up bngap's own ops (reductions, predict's tracing) on a few samples.
        check(model, batch[:4], options=CheckOptions(batch_size=args.batch, effects=0))
        spent, calls = _stage_timers() if args.breakdown else ({}, {})
        t0 = time.perf_counter()
        report = check(model, x, options=CheckOptions(batch_size=args.batch, effects=_effects(args.effects)))
        out["seconds"] = time.perf_counter() - t0
        out["effects"] = args.effects
        out["effects_computed"] = sum(1 for r in report.layers if r.output_effect is not None)
        out["gap"] = report.output_gap.relative_l2
        out["top_cause"] = report.findings[0].cause.value if report.findings else None
        if args.breakdown:
            out["stages"] = {k: {"seconds": spent[k], "calls": calls[k]} for k in spent}
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def run_variant(**kw) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__)]
    for k, v in kw.items():
        if v is True:
            cmd.append(f"--{k.replace('_', '-')}")
        elif v is not False and v is not None:
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


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=["plain", "check"], default=None,
                   help="run only this variant in this process and print its numbers as JSON "
                        "(what the benchmark runs in each child process)")
    p.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=224, help="image size (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument("--samples", type=int, default=None, help="number of images (default: one batch)")
    p.add_argument("--effects", default=None,
                   help="check variants to run, comma-separated effects settings (default: 0,auto,3)")
    p.add_argument("--quick", action="store_true", help="64x64 images (32x32 for the scaling run): a fast smoke run")
    p.add_argument("--scaling-size", type=int, default=None,
                   help="image size of the 1x/10x memory run (default: 64, 32 with --quick)")
    p.add_argument("--no-scaling", action="store_true", help="skip the 1x/10x samples memory run")
    p.add_argument("--callback", action="store_true", help="also measure the GapMonitor callback's overhead")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    if args.variant:
        args.samples = args.samples or args.batch
        args.effects = args.effects or "auto"
        print(json.dumps(child(args)))
        return

    size = 64 if args.quick and args.size == 224 else args.size
    samples = args.samples or args.batch
    effects_list = (args.effects or "0,auto,3").split(",")
    results: dict = {"model": "keras.applications.ResNet50(weights=None, classes=10)", "size": size,
                     "batch": args.batch, "samples": samples, "cpu_count": os.cpu_count(),
                     "load_average_before": os.getloadavg(), "python": platform.python_version()}
    started = time.perf_counter()
    plain = run_variant(variant="plain", size=size, batch=args.batch, samples=samples)
    rows = [("two plain passes (eval + train)", plain)]
    for eff in effects_list:
        rows.append((f"check, effects={eff}",
                     run_variant(variant="check", size=size, batch=args.batch, samples=samples, effects=eff,
                                 breakdown=(eff == "auto"))))

    print(f"ResNet50 (weights=None), {size}x{size}x3, batch {args.batch}, {samples} samples, "
          f"{os.cpu_count()} CPU cores; each variant in its own process, after one warm-up call per mode")
    print(f"plain passes: eval {plain['eval_s']:.2f} s + train {plain['train_s']:.2f} s")
    head = (f"{'variant':32} {'seconds':>8} {'x time':>7} {'base MB':>8} {'peak MB':>8} {'x peak':>7} "
            f"{'+MB':>7} {'x +MB':>6}")
    print(head)
    print("-" * len(head))
    base_growth = plain["peak_rss_mb"] - plain["baseline_rss_mb"]
    out_rows = []
    for name, r in rows:
        growth = r["peak_rss_mb"] - r["baseline_rss_mb"]
        row = {"variant": name, "seconds": r["seconds"], "time_ratio": r["seconds"] / plain["seconds"],
               "baseline_rss_mb": r["baseline_rss_mb"], "peak_rss_mb": r["peak_rss_mb"],
               "peak_ratio": r["peak_rss_mb"] / plain["peak_rss_mb"], "growth_mb": growth,
               "growth_ratio": growth / base_growth if base_growth > 0 else None}
        for k in ("effects_computed", "gap", "top_cause", "eval_s", "train_s", "stages"):
            if k in r:
                row[k] = r[k]
        out_rows.append(row)
        print(f"{name:32} {row['seconds']:8.2f} {row['time_ratio']:7.2f} {row['baseline_rss_mb']:8.0f} "
              f"{row['peak_rss_mb']:8.0f} {row['peak_ratio']:7.2f} {growth:7.0f} {_fmt(row['growth_ratio'], '6.2f')}")
    print("x time, x peak: relative to the two plain passes; base MB: RSS after building the model; "
          "+MB: peak minus base; x +MB: that increase relative to the plain passes' increase")
    results["rows"] = out_rows
    verdict = {"time_ratio_default": None, "peak_ratio_default": None}
    for row in out_rows:
        if row["variant"] == "check, effects=auto":
            verdict = {"time_ratio_default": row["time_ratio"], "peak_ratio_default": row["peak_ratio"]}
            print(f"target (check <= 3x time, <= 1.5x peak memory of the plain passes), default options: "
                  f"time {row['time_ratio']:.2f}x {'ok' if row['time_ratio'] <= 3 else 'MISSED'}, "
                  f"peak {row['peak_ratio']:.2f}x {'ok' if row['peak_ratio'] <= 1.5 else 'MISSED'}")
            if row.get("stages"):
                print("\nwhere check's time goes (effects=auto; stages overlap: indented lines are part of the one above)")
                for k, v in sorted(row["stages"].items(), key=lambda kv: -kv[1]["seconds"]):
                    print(f"  {k:46} {v['seconds']:7.2f} s  {v['calls']:4d} call(s)")
    results["target"] = verdict

    if not args.no_scaling:
        small = args.scaling_size or (32 if args.quick else 64)
        print(f"\npeak memory as the data grow ({small}x{small} images, batch {args.batch}, check with effects=auto):")
        scaling = []
        for n in (args.batch, args.batch * 10):
            pl = run_variant(variant="plain", size=small, batch=args.batch, samples=n)
            ck = run_variant(variant="check", size=small, batch=args.batch, samples=n, effects="auto")
            entry = {"samples": n, "data_mb": n * small * small * 3 * 4 / 2**20,
                     "plain_peak_rss_mb": pl["peak_rss_mb"], "plain_baseline_rss_mb": pl["baseline_rss_mb"],
                     "check_peak_rss_mb": ck["peak_rss_mb"], "check_baseline_rss_mb": ck["baseline_rss_mb"],
                     "plain_seconds": pl["seconds"], "check_seconds": ck["seconds"]}
            scaling.append(entry)
            print(f"  {n:5d} samples ({entry['data_mb']:6.1f} MB of data): plain peak {pl['peak_rss_mb']:6.0f} MB "
                  f"(base {pl['baseline_rss_mb']:.0f}), {pl['seconds']:6.2f} s; check peak {ck['peak_rss_mb']:6.0f} MB "
                  f"(base {ck['baseline_rss_mb']:.0f}), {ck['seconds']:6.2f} s")
        a, b = scaling
        growth = lambda e: e["check_peak_rss_mb"] - e["check_baseline_rss_mb"]
        print(f"  10x the samples: check's peak {b['check_peak_rss_mb'] / a['check_peak_rss_mb']:.2f}x "
              f"(increase over base {growth(b) / growth(a) if growth(a) > 0 else float('nan'):.2f}x; "
              f"the data themselves are part of the base)")
        results["memory_scaling"] = scaling

    if args.callback:
        cb = callback_overhead()
        results["callback"] = cb
        print(f"\nGapMonitor on 64 samples every epoch, fit() of 8192 samples x 5 epochs: "
              f"{cb['fit_s']:.2f} s without, {cb['fit_with_monitor_s']:.2f} s with ({cb['ratio']:.2f}x; "
              f"{1000 * cb['per_epoch_overhead_s']:.0f} ms per epoch, first-epoch tracing included)")
    results["load_average_after"] = os.getloadavg()
    results["benchmark_seconds"] = time.perf_counter() - started
    print(f"\nload average before {results['load_average_before'][0]:.2f}, after {results['load_average_after'][0]:.2f} "
          f"(other work on the machine skews the timings); benchmark took {results['benchmark_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
