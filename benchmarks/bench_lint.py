"""Benchmark: `bngap lint` on ResNet50, side by side with loading the file.

Builds ResNet50 (`weights=None`, 224x224 by default; the statistics are set
to non-initial values so that every rule has real numbers to read), saves it
as .keras, then in one process, after TensorFlow is imported: loading the
file with bngap's safe loader, the lint analysis alone (median of several
runs), and one plain `model(x, training=False)` call on one image for scale.

    python benchmarks/bench_lint.py                # ResNet50, 224x224
    python benchmarks/bench_lint.py --size 64      # smaller file, same layers

Target: the analysis well under a second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()

    from bngap.backend import import_keras

    keras = import_keras()
    import numpy as np

    from bngap.linting import lint, lint_model
    from bngap.loading import load_model

    model = keras.applications.ResNet50(weights=None, input_shape=(args.size, args.size, 3))
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, n).astype("float32"))
    folder = Path(tempfile.mkdtemp(prefix="bngap-bench-lint-"))
    path = folder / "resnet50.keras"
    model.save(path)
    x = rng.uniform(0, 255, (1, args.size, args.size, 3)).astype("float32")
    model(x, training=False)  # warm-up

    def timed(fn):
        t = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
        return statistics.median(t)

    loaded = load_model(path).model
    results = {
        "model": f"ResNet50 {args.size}x{args.size}",
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "load_s": timed(lambda: load_model(path)),
        "lint_analysis_s": timed(lambda: lint_model(loaded)),
        "lint_file_s": timed(lambda: lint(path)),
        "inference_call_1_image_s": timed(lambda: model(x, training=False)),
    }
    results["analysis_vs_load"] = results["lint_analysis_s"] / results["load_s"]
    report = lint_model(loaded)
    results["batchnorm_layers"] = len(report.batchnorm)
    results["findings"] = [f.rule for f in report.findings]
    for k, v in results.items():
        print(f"{k:>26}: {v:.4f}" if isinstance(v, float) else f"{k:>26}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
