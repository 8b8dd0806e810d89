"""Benchmark: `check` and `fix` cost as the data grow (32, 320, 3200 samples).

A small CNN with BatchNormalization and Dropout at 32x32x3, saved as
`.keras`; its data in a compressed `.npz` (read by rows, as `bngap check
MODEL DATA` reads it). Each (command, size) runs in its own process (this
script again, with `--child`): it imports TensorFlow, loads the model, runs
one warm-up on 32 samples (tracing and first-call costs are paid once, not
per sample), then times the command on all samples and reports its peak RSS
(`getrusage(RUSAGE_SELF).ru_maxrss`). Linear cost shows as flat seconds per
sample; flat memory as a flat peak.

    python benchmarks/bench_scaling.py                  # 32, 320, 3200 samples
    python benchmarks/bench_scaling.py --sizes 32,320 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 2**20 if sys.platform == "darwin" else ru / 1024.0


def make_files(folder: Path, sizes: list[int]) -> tuple[Path, dict[int, Path]]:
    """The model (trained a few steps: a real gap) and one compressed .npz per size."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from bngap.backend import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            L.Conv2D(16, 3, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Conv2D(32, 3, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dropout(0.2),
            L.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.25, (max(sizes), 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, max(sizes))
    model.fit(x[:320], y[:320], epochs=1, batch_size=32, verbose=0)
    mpath = folder / "model.keras"
    model.save(mpath)
    data = {}
    for n in sizes:
        data[n] = folder / f"data_{n}.npz"
        np.savez_compressed(data[n], x=x[:n], y=y[:n])
    return mpath, data


def child(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import bngap
    from bngap.backend import import_keras

    import_keras()
    if args.passes == "eager":
        from bngap import compiled

        compiled.available = lambda model: False
    base = _peak_rss_mb()
    warm = Path(args.data).with_name("data_32.npz")
    out = Path(tempfile.mkdtemp()) / "fixed.keras"
    if args.command == "check":
        bngap.check(args.model, str(warm))
        t = time.perf_counter()
        report = bngap.check(args.model, args.data)
        seconds = time.perf_counter() - t
        samples, gap = report.data.samples, report.output_gap.relative_l2
    else:
        bngap.fix(args.model, str(warm), output=str(out), force=True)
        t = time.perf_counter()
        result = bngap.fix(args.model, args.data, output=str(out), force=True)
        seconds = time.perf_counter() - t
        samples, gap = result.samples, result.after.relative_l2
    return {
        "command": args.command,
        "passes": args.passes,
        "samples": samples,
        "seconds": seconds,
        "gap": gap,
        "baseline_rss_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_child(command: str, model: Path, data: Path, passes: str) -> dict:
    res = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            command,
            "--model",
            str(model),
            "--data",
            str(data),
            "--passes",
            passes,
        ],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise SystemExit(f"{command} on {data} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", choices=["check", "fix"], dest="command", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="32,320,3200", help="sample counts (default: %(default)s)")
    p.add_argument(
        "--passes",
        default="auto",
        help="auto (compiled from 8 batches on TensorFlow), eager, or both as "
        "'auto,eager' side by side (default: %(default)s)",
    )
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    if args.command:
        print(json.dumps(child(args)))
        return
    modes = args.passes.split(",")
    sizes = sorted({32, *(int(s) for s in args.sizes.split(","))})
    started = time.perf_counter()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        mpath, data = make_files(Path(tmp), sizes)
        rows = [
            run_child(cmd, mpath, data[n], mode)
            for mode in modes
            for cmd in ("check", "fix")
            for n in sizes
        ]
    print(
        "small CNN (2 conv + 2 BatchNormalization + Dropout), 32x32x3, batch 32, "
        f"data in a compressed .npz; {os.cpu_count()} CPU cores; "
        "each row its own process, after a warm-up on 32 samples"
    )
    head = (
        f"{'command':8} {'passes':6} {'samples':>8} {'seconds':>8} {'ms/sample':>10} {'marginal':>9} "
        f"{'peak MB':>8} {'x peak':>7}"
    )
    print(head)
    print("-" * len(head))
    first, prev = {}, {}
    for r in rows:
        per = 1000 * r["seconds"] / r["samples"]
        key = (r["command"], r["passes"])
        ref = first.setdefault(key, r)
        before = prev.get(key)
        r["ms_per_sample"], r["peak_ratio"] = per, r["peak_rss_mb"] / ref["peak_rss_mb"]
        r["marginal_ms_per_sample"] = (
            None
            if before is None
            else 1000 * (r["seconds"] - before["seconds"]) / (r["samples"] - before["samples"])
        )
        prev[key] = r
        marginal = (
            "-" if r["marginal_ms_per_sample"] is None else f"{r['marginal_ms_per_sample']:.2f}"
        )
        print(
            f"{r['command']:8} {r['passes']:6} {r['samples']:8d} {r['seconds']:8.2f} {per:10.2f} {marginal:>9} "
            f"{r['peak_rss_mb']:8.0f} {r['peak_ratio']:7.2f}"
        )
    print(
        "marginal: ms per added sample since the size above (linear cost: about constant); "
        "x peak: peak RSS relative to 32 samples"
    )
    after = os.getloadavg()[0]
    print(
        f"load average before {load:.2f}, after {after:.2f}; "
        f"benchmark took {time.perf_counter() - started:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "load_before": load, "load_after": after}, fh, indent=2)


if __name__ == "__main__":
    main()
