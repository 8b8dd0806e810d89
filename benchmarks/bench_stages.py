"""Benchmark: where `check`'s time goes, cold and warm, against the floor.

For one model and one batch, in two processes (this script again, with
`--child plain|check`):

- plain: the floor. The first (cold) and second (warm) eager
  `model(x, training=False)` and `model(x, training=True)`, the same two
  passes compiled with `tf.function` (first call traces), and `predict(x)`.
- check: the first `check` in a fresh process (cold) and a second one
  (warm), each split into stages by timers wrapped around bngap's passes
  and its per-layer work (output comparisons, BN moments, variable
  restores). Indented stages are part of the one above.

    python benchmarks/bench_stages.py                          # ResNet50, 224x224, batch 32
    python benchmarks/bench_stages.py --model densenet121 --size 96
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _build(name: str, size: int):
    from bngap.backend import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    app = {"resnet50": keras.applications.ResNet50, "densenet121": keras.applications.DenseNet121}[
        name
    ]
    return keras, app(weights=None, input_shape=(size, size, 3), classes=10)


def _timers():
    """Wraps bngap's passes and per-layer work with timers: {label: [seconds, calls]}."""
    from stagetimers import timers

    import bngap.measurement as measurement
    import bngap.preprocessing as preprocessing
    from bngap.backend import StateGuard
    from bngap.bnstate import BatchNormState
    from bngap.probe import Probe

    spent, timed = timers()

    timed(measurement, "measure", "measure() (all passes)")
    for attr, label in (
        ("eval_train", "  a batch's two passes (compiled, in lockstep, or the two below)"),
        ("lockstep_pass", "  both passes in one call (Keras' own classes)"),
        ("eval_pass", "  inference pass (keeps outputs, BN moments)"),
        ("train_pass", "  training pass (divergence, own contribution)"),
        ("masked_pass", "  group / output-effect passes"),
        ("observe_pass", "  inference paths: model(x, training=False), model(x)"),
        ("forced_eval_pass", "  inference paths: forced inference"),
        ("predict", "  inference paths: predict(x)"),
    ):
        timed(Probe, attr, label)
    timed(Probe, "modes_pass", "  inference paths: modes of a no-flag call (computes nothing)")
    timed(Probe, "_divergence", "    per-layer divergences (compared, or summed from inputs)")
    timed(Probe, "_compare", "      two outputs compared (divergences; own, not BN)")
    timed(Probe, "_bn_input_moments", "    per-BN input moments (.numpy() each)")
    timed(Probe, "_eval_same_input", "    per-layer own-contribution reruns")
    timed(BatchNormState, "restore", "    per-BN statistics restores")
    timed(StateGuard, "restore", "    variable restores after each pass")
    timed(Probe, "__enter__", "  probe set-up (wrappers, snapshot of every variable)")
    timed(Probe, "__exit__", "  probe tear-down")
    timed(preprocessing, "probe_input_transforms", "preprocessing probe")
    return spent


def child(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    keras, model = _build(args.model, args.size)
    import tensorflow as tf

    x = (
        np.random.default_rng(0)
        .uniform(0, 255, (args.batch, args.size, args.size, 3))
        .astype("float32")
    )
    saved = [v.numpy() for v in model.non_trainable_variables]

    def restore():
        for v, s in zip(model.non_trainable_variables, saved):
            v.assign(s)

    def clock(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    out: dict = {"child": args.child, "base_rss_mb": _peak_rss_mb()}
    if args.child == "plain":
        ev = lambda: model(x, training=False)  # noqa: E731
        tr = lambda: model(x, training=True)  # noqa: E731
        out["eval_cold"], out["train_cold"] = clock(ev), clock(tr)
        restore()
        out["eval_warm"], out["train_warm"] = clock(ev), clock(tr)
        restore()
        f_ev = tf.function(lambda t: model(t, training=False))
        f_tr = tf.function(lambda t: model(t, training=True))
        out["eval_compiled_first"], out["train_compiled_first"] = (
            clock(lambda: f_ev(x)),
            clock(lambda: f_tr(x)),
        )
        restore()
        out["eval_compiled_warm"], out["train_compiled_warm"] = (
            clock(lambda: f_ev(x)),
            clock(lambda: f_tr(x)),
        )
        restore()
        out["predict_first"] = clock(lambda: model.predict(x[:4], verbose=0))
        out["predict_warm"] = clock(lambda: model.predict(x[:4], verbose=0))
    else:
        from bngap.pipeline import CheckOptions, check
        from bngap.probe import Probe

        spent = _timers()
        reuse = {"reused": 0, "rerun": 0}
        exit_probe = Probe.__exit__

        def counted_exit(self, *exc):  # what the masked passes took from the inference pass
            reuse["reused"] += self.reused
            reuse["rerun"] += self.rerun
            return exit_probe(self, *exc)

        Probe.__exit__ = counted_exit  # type: ignore[method-assign]
        for run in ("cold", "warm"):
            spent.clear()
            t = time.perf_counter()
            report = check(model, x, options=CheckOptions(batch_size=args.batch))
            out[f"check_{run}"] = time.perf_counter() - t
            out[f"stages_{run}"] = {k: list(v) for k, v in spent.items()}
        out["effects_computed"] = sum(1 for r in report.layers if r.output_effect is not None)
        out["reuse"] = dict(reuse)  # over the cold and the warm check
        t = time.perf_counter()
        check(model, x, options=CheckOptions(batch_size=args.batch, effects=0))
        out["check_effects0_warm"] = time.perf_counter() - t
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def run_child(kind: str, args) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        kind,
        "--model",
        args.model,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", choices=["plain", "check"], help=argparse.SUPPRESS)
    p.add_argument("--model", choices=["resnet50", "densenet121"], default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    load = os.getloadavg()[0]
    plain, chk = run_child("plain", args), run_child("check", args)
    floor_cold = plain["eval_cold"] + plain["train_cold"]
    floor_warm = plain["eval_warm"] + plain["train_warm"]
    print(
        f"{args.model} (weights=None), {args.size}x{args.size}x3, batch {args.batch}, one batch; "
        f"{os.cpu_count()} CPU cores, load average {load:.2f}"
    )
    print(
        f"floor, eager: cold {floor_cold:.2f} s "
        f"(eval {plain['eval_cold']:.2f} + train {plain['train_cold']:.2f}); "
        f"warm {floor_warm:.2f} s (eval {plain['eval_warm']:.2f} + train {plain['train_warm']:.2f})"
    )
    print(
        "floor, tf.function: first call "
        f"{plain['eval_compiled_first'] + plain['train_compiled_first']:.2f} s (traces); "
        f"warm {plain['eval_compiled_warm'] + plain['train_compiled_warm']:.2f} s "
        f"(eval {plain['eval_compiled_warm']:.2f} + train {plain['train_compiled_warm']:.2f})"
    )
    print(
        f"predict(x[:4]): first {plain['predict_first']:.2f} s, "
        f"second {plain['predict_warm']:.2f} s"
    )
    print(
        f"check (default, {chk['effects_computed']} output effect(s)): "
        f"cold {chk['check_cold']:.2f} s "
        f"= {chk['check_cold'] / floor_cold:.2f}x the cold floor; warm {chk['check_warm']:.2f} s "
        f"= {chk['check_warm'] / floor_warm:.2f}x the warm floor; --effects 0 warm "
        f"{chk['check_effects0_warm']:.2f} s = {chk['check_effects0_warm'] / floor_warm:.2f}x"
    )
    print(
        f"masked passes (cold + warm check): {chk['reuse']['reused']} layer calls taken from "
        f"the inference pass, {chk['reuse']['rerun']} pass(es) run again whole"
    )
    print(
        f"peak RSS: plain {plain['peak_rss_mb']:.0f} MB, check {chk['peak_rss_mb']:.0f} MB "
        f"({chk['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x)"
    )
    print(f"\n{'stage':58} {'cold s':>7} {'warm s':>7} {'calls':>6}")
    labels = list(chk["stages_cold"])
    for k in labels:
        c, w = chk["stages_cold"][k], chk["stages_warm"].get(k, [0.0, 0])
        print(f"{k:58} {c[0]:7.2f} {w[0]:7.2f} {w[1]:6d}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"plain": plain, "check": chk, "load": load}, fh, indent=2)


if __name__ == "__main__":
    main()
