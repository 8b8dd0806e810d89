"""Benchmark: `bngap check` against two plain forward passes, cold and warm, side by side.

The floor is two plain eager calls of the same model on the same batch,
`model(x, training=False)` then `model(x, training=True)`. Each process (this
script again, with `--variant plain|check`) builds the model, then times its
work twice: the first call in the fresh process (cold: every kernel and
trace made for the first time) and a second one (warm). Model building and
imports are not timed. Variants run interleaved (plain, check, check
--effects 0, plain, ...) `--repeats` times, one process at a time, and the
ratios are medians over the repeats: on a shared machine one run proves
little. Peak memory is each process's peak RSS (`getrusage`).

    python benchmarks/bench_check.py                      # ResNet50 224 and DenseNet121 128, batch 32
    python benchmarks/bench_check.py --cases densenet121:64 --repeats 5
    python benchmarks/bench_check.py --quick              # ResNet50 and DenseNet121 at 64x64, 1 repeat

Also (optional) the GapMonitor callback's overhead on a fit().

Target: the default check at most 2x the warm floor and 1.5x the cold floor,
peak memory at most 1.2x; `--effects 0` closer still.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict


def _peak_rss_mb() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        ru / (1024.0 * 1024.0) if sys.platform == "darwin" else ru / 1024.0
    )  # bytes on macOS, KiB on Linux


def _current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _effects(value: str):
    return None if value == "all" else value if value == "auto" else int(value)


def _stage_timers():
    """Wraps bngap's passes and stages with timers: {label: [seconds, calls]}."""
    from stagetimers import timers

    import bngap.measurement as measurement
    import bngap.preprocessing as preprocessing
    from bngap.backend import StateGuard
    from bngap.capture import CaptureProbe
    from bngap.probe import Probe

    spent, timed = timers()

    for attr in (
        "eval_train",
        "lockstep_pass",
        "eval_pass",
        "train_pass",
        "masked_pass",
        "modes_pass",
        "observe_pass",
        "forced_eval_pass",
        "predict",
    ):
        timed(Probe, attr, f"pass: {attr}")
    timed(CaptureProbe, "first_bn_moments", "pass: first_bn_moments")
    timed(Probe, "__enter__", "probe set-up (wrappers, variable snapshot)")
    timed(Probe, "__exit__", "probe tear-down (restore variables)")
    timed(StateGuard, "restore", "  of which: variable restores")
    timed(measurement, "measure", "measure() total")
    timed(measurement, "compare_inference_paths", "  inference-path comparisons")
    timed(preprocessing, "probe_input_transforms", "preprocessing probe total")
    return spent


MODELS = {"resnet50": "ResNet50", "densenet121": "DenseNet121"}


def child(args) -> dict:
    """Runs one variant in this process, cold then warm, and returns its numbers."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from bngap.backend import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    app = getattr(keras.applications, MODELS[args.model])
    model = app(weights=None, input_shape=(args.size, args.size, 3), classes=10)
    x = (
        np.random.default_rng(0)
        .uniform(0, 255, (args.batch, args.size, args.size, 3))
        .astype("float32")
    )
    saved = [np.array(v) for v in model.non_trainable_variables]

    def restore():  # training-mode calls move the BN statistics: keep every run on the same model
        for v, s in zip(model.non_trainable_variables, saved):
            v.assign(s)

    out = {"variant": args.variant, "effects": args.effects, "baseline_rss_mb": _peak_rss_mb()}
    if args.variant == "plain":
        for run in ("cold", "warm"):
            t0 = time.perf_counter()
            model(x, training=False)
            t1 = time.perf_counter()
            model(x, training=True)
            out[run] = time.perf_counter() - t0
            out[f"{run}_eval"], out[f"{run}_train"] = t1 - t0, out[run] - (t1 - t0)
            restore()
    else:
        from bngap import compiled
        from bngap.pipeline import CheckOptions, check

        effects, _, policy = args.effects.partition(":")
        if policy == "always":
            compiled.COMPILE_FROM_BATCHES = 1
        elif policy == "never":
            compiled.available = lambda model: False
        elif policy == "paths":  # as for a model with code of the user's: model(x), predict()
            from bngap import probe

            probe.plain_keras_model = lambda *a: False
        elif policy == "classic":  # no lockstep pass: the inference pass, then the training pass
            from bngap import lockstep

            lockstep.twin_uses = lambda *a: None
        spent: dict = _stage_timers() if args.breakdown else {}
        for run in ("cold", "warm"):
            spent.clear()
            t0 = time.perf_counter()
            report = check(
                model,
                x,
                options=CheckOptions(batch_size=args.batch, effects=_effects(effects)),
            )
            out[run] = time.perf_counter() - t0
            if args.breakdown:
                out[f"stages_{run}"] = {k: list(v) for k, v in spent.items()}
        out["effects_computed"] = sum(1 for r in report.layers if r.output_effect is not None)
        out["gap"] = report.output_gap.relative_l2
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
from bngap.backend import import_keras
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
    t = time.perf_counter()
    m.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=cb)
    return time.perf_counter() - t
plain = run([]); watched = run([bngap.GapMonitor(x[:64], verbose=False)])
print(json.dumps({"fit_s": plain, "fit_with_monitor_s": watched, "ratio": watched / plain,
                  "per_epoch_overhead_s": (watched - plain) / 5}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"callback benchmark failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    return statistics.median(values)


def run_case(model: str, size: int, batch: int, repeats: int, effects_list: list[str]) -> dict:
    """Interleaved repeats of the plain passes and each check variant; medians."""
    runs: dict = defaultdict(list)
    variants = [("plain", None)] + [("check", e) for e in effects_list]
    for rep in range(repeats):
        for variant, eff in variants:
            runs[(variant, eff)].append(
                run_variant(
                    variant=variant,
                    model=model,
                    size=size,
                    batch=batch,
                    effects=eff,
                    breakdown=(eff is not None and eff.startswith("auto") and rep == 0),
                )
            )
    plain = runs[("plain", None)]
    floor = {k: _median([r[k] for r in plain]) for k in ("cold", "warm")}
    peak_plain = _median([r["peak_rss_mb"] for r in plain])
    rows = [
        {
            "variant": "two plain passes (eval + train)",
            "cold": floor["cold"],
            "warm": floor["warm"],
            "cold_ratio": 1.0,
            "warm_ratio": 1.0,
            "peak_rss_mb": peak_plain,
            "peak_ratio": 1.0,
            "cold_runs": [r["cold"] for r in plain],
            "warm_runs": [r["warm"] for r in plain],
        }
    ]
    for _, eff in variants[1:]:
        rs = runs[("check", eff)]
        # ratio of each run to the floor measured next to it, then the median of those
        cold_ratios = [c["cold"] / p["cold"] for c, p in zip(rs, plain)]
        warm_ratios = [c["warm"] / p["warm"] for c, p in zip(rs, plain)]
        peak = _median([r["peak_rss_mb"] for r in rs])
        rows.append(
            {
                "variant": f"check --effects {eff}".replace(":paths", ", inference paths by passes")
                .replace(":classic", ", passes one after the other")
                .replace(":", ", compile "),
                "cold": _median([r["cold"] for r in rs]),
                "warm": _median([r["warm"] for r in rs]),
                "cold_ratio": _median(cold_ratios),
                "warm_ratio": _median(warm_ratios),
                "peak_rss_mb": peak,
                "peak_ratio": peak / peak_plain,
                "cold_runs": [r["cold"] for r in rs],
                "warm_runs": [r["warm"] for r in rs],
                "effects_computed": rs[0]["effects_computed"],
                "gap": rs[0]["gap"],
                "stages": {k: v for k, v in rs[0].items() if k.startswith("stages_")},
            }
        )
    return {"model": model, "size": size, "batch": batch, "repeats": repeats, "rows": rows}


def print_case(case: dict) -> None:
    print(
        f"\n{MODELS[case['model']]} (weights=None), {case['size']}x{case['size']}x3, one batch of "
        f"{case['batch']}; medians of {case['repeats']} interleaved fresh-process run(s)"
    )
    head = (
        f"{'variant':34} {'cold s':>7} {'x cold':>7} {'warm s':>7} {'x warm':>7} {'peak MB':>8} "
        f"{'x peak':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in case["rows"]:
        print(
            f"{r['variant']:34} {r['cold']:7.2f} {r['cold_ratio']:7.2f} {r['warm']:7.2f} "
            f"{r['warm_ratio']:7.2f} {r['peak_rss_mb']:8.0f} {r['peak_ratio']:7.2f}"
        )
    for r in case["rows"]:
        if r["variant"].startswith("check --effects auto"):
            ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
            print(
                f"target, {r['variant']}: warm {r['warm_ratio']:.2f}x (<= 2: {ok(r['warm_ratio'] <= 2)}), "
                f"cold {r['cold_ratio']:.2f}x (<= 1.5: {ok(r['cold_ratio'] <= 1.5)}), "
                f"peak {r['peak_ratio']:.2f}x (<= 1.2: {ok(r['peak_ratio'] <= 1.2)}); "
                f"{r['effects_computed']} output effect(s) measured"
            )
            stages = r["stages"]
            if stages:
                print(
                    "where the default check's time goes (first repeat; indented: part of the line above)"
                )
                cold, warm = stages.get("stages_cold", {}), stages.get("stages_warm", {})
                for k in sorted(cold, key=lambda k: -cold[k][0]):
                    w = warm.get(k, [0.0, 0])
                    print(
                        f"  {k:46} cold {cold[k][0]:6.2f} s  warm {w[0]:6.2f} s  {w[1]:4d} call(s)"
                    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--variant",
        choices=["plain", "check"],
        default=None,
        help="run only this variant in this process and print its numbers as JSON "
        "(what the benchmark runs in each child process)",
    )
    p.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", choices=sorted(MODELS), default="resnet50", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    p.add_argument(
        "--cases",
        default=None,
        help="MODEL:SIZE,... (default: resnet50:224,densenet121:128; models: resnet50, densenet121)",
    )
    p.add_argument("--batch", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument(
        "--repeats", type=int, default=None, help="interleaved fresh-process runs (default: 3)"
    )
    p.add_argument(
        "--effects",
        default=None,
        help="check variants, comma-separated effects settings, each optionally with :always or "
        ":never to compile the passes always or never (default: auto,0; on TensorFlow the "
        "default compiles them from 8 batches, see bngap/compiled.py), or :paths to check the "
        "model as one with code of the user's (the inference paths by their passes: model(x) "
        "on 4 samples and predict(); BN statistics put back after every pass), or :classic "
        "for the inference pass and the training pass one after the other (no lockstep pass)",
    )
    p.add_argument(
        "--quick", action="store_true", help="both models at 64x64, one repeat: a smoke run"
    )
    p.add_argument(
        "--callback", action="store_true", help="also measure the GapMonitor callback's overhead"
    )
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    if args.variant:
        args.effects = args.effects or "auto"
        print(json.dumps(child(args)))
        return

    cases = args.cases or (
        "resnet50:64,densenet121:64" if args.quick else "resnet50:224,densenet121:128"
    )
    repeats = args.repeats or (1 if args.quick else 3)
    effects_list = (args.effects or "auto,0").split(",")
    results: dict = {
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "python": platform.python_version(),
        "cases": [],
    }
    started = time.perf_counter()
    print(
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} before the run "
        "(other work on a shared machine skews the timings: read the ratios, measured side by side)"
    )
    for spec in cases.split(","):
        name, size = spec.split(":")
        case = run_case(name, int(size), args.batch, repeats, effects_list)
        results["cases"].append(case)
        print_case(case)
    print(
        "cold: the first call in a fresh process; warm: the second; x cold, x warm: median over the "
        "repeats of each run's time over the floor's in the same repeat; x peak: peak RSS over the floor's"
    )

    if args.callback:
        cb = callback_overhead()
        results["callback"] = cb
        print(
            f"\nGapMonitor on 64 samples every epoch, fit() of 8192 samples x 5 epochs: "
            f"{cb['fit_s']:.2f} s without, {cb['fit_with_monitor_s']:.2f} s with ({cb['ratio']:.2f}x; "
            f"{1000 * cb['per_epoch_overhead_s']:.0f} ms per epoch, first-epoch tracing included)"
        )
    results["load_average_after"] = os.getloadavg()
    results["benchmark_seconds"] = time.perf_counter() - started
    print(
        f"\nload average before {results['load_average_before'][0]:.2f}, after "
        f"{results['load_average_after'][0]:.2f}; benchmark took {results['benchmark_seconds']:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
