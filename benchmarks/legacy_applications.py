"""Keras 2 files of real architectures: does bngap load them as Keras 2 ran them?

Builds keras.applications models with Keras 2 (`tf_keras`, weights=None,
small inputs), trains each for a few steps nested in a Sequential (the usual
transfer-learning shape) and saves `.h5` files: the base alone, the
Sequential fine-tuned, the Sequential with the base frozen. Then, in a
separate Keras 3 process, loads each file with Keras 3 alone and with
`bngap.loading.load_model`, and compares the outputs with Keras 2's own on
the same inputs (inference mode; training mode too where the model has no
Dropout, whose masks differ between the two).

    pip install tf-keras
    python benchmarks/legacy_applications.py [--out DIR] [--only resnet50,mobilenetv2]

Prints one row per file and a summary; exits 1 if bngap fails to load a file
or its outputs differ from Keras 2's by more than 1e-4 (relative to the
output's largest magnitude).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ARCHS = {  # name: (constructor, input size, keyword arguments)
    "mobilenetv2": ("MobileNetV2", 96, {"alpha": 0.35}),
    "mobilenetv3small": ("MobileNetV3Small", 96, {}),
    "resnet50": ("ResNet50", 96, {}),
    "resnet50v2": ("ResNet50V2", 96, {}),
    "densenet121": ("DenseNet121", 96, {}),
    "efficientnetb0": ("EfficientNetB0", 96, {}),
    "inceptionv3": ("InceptionV3", 75, {}),
    "xception": ("Xception", 75, {}),
}


def write_keras2(out: Path, names: list[str]) -> None:
    """Runs in the Keras 2 process: the files and Keras 2's own outputs."""
    import numpy as np
    import tf_keras as k

    rng = np.random.default_rng(0)
    refs = {}
    for name in names:
        ctor, size, kw = ARCHS[name]
        base = getattr(k.applications, ctor)(
            input_shape=(size, size, 3), weights=None, include_top=False, **kw
        )
        x = rng.uniform(0, 255, (16, size, size, 3)).astype("float32")
        y = rng.integers(0, 3, 16)
        for frozen in (False, True):
            base.trainable = not frozen
            m = k.Sequential(
                [
                    base,
                    k.layers.GlobalAveragePooling2D(),
                    k.layers.Dropout(0.2),
                    k.layers.Dense(3, activation="softmax"),
                ]
            )
            m.compile("adam", "sparse_categorical_crossentropy")
            m.fit(x / 255.0, y, epochs=2, batch_size=8, verbose=0)
            files = {f"{name}_{'frozen' if frozen else 'finetuned'}.h5": (m, False)}
            if frozen:
                # EfficientNet has Dropout inside: its training mode is random
                random = any("Dropout" in type(layer).__name__ for layer in base.submodules)
                files[f"{name}_base.h5"] = (base, not random)
            for fname, (model, deterministic) in files.items():
                model.save(out / fname)
                probe = x[:4] / 255.0
                refs[f"{fname}|x"] = probe
                refs[f"{fname}|inference"] = model(probe, training=False).numpy()
                if deterministic:
                    refs[f"{fname}|training"] = model(probe, training=True).numpy()
                print(f"  wrote {fname}", flush=True)
    np.savez(out / "keras2_outputs.npz", **refs)


def compare(out: Path) -> int:
    """Runs in the Keras 3 process."""
    import warnings

    import keras
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bngap.loading import load_model

    stored = np.load(out / "keras2_outputs.npz")
    refs: dict[str, dict] = {}
    for key in stored.files:
        fname, what = key.split("|")
        refs.setdefault(fname, {"training": None})[what] = stored[key]
    bad = alone_ok = 0
    print(
        f"{'file':32} {'Keras 3 alone':14} {'bngap':6} {'inference':>10} {'training':>10}  repairs"
    )
    for fname, ref in refs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                keras.models.load_model(out / fname, compile=False)
                alone = "loads"
                alone_ok += 1
            except Exception:
                alone = "refused"
        try:
            loaded = load_model(out / fname)
        except Exception as e:  # report and go on
            print(f"{fname:32} {alone:14} FAIL   {e}")
            bad += 1
            continue

        # loaded and ref bound as defaults: rel is called at once, but B023 cannot see that
        def rel(mode: str, loaded=loaded, ref=ref) -> float:
            got = np.asarray(loaded.model(ref["x"], training=(mode == "training")))
            return float(np.abs(got - ref[mode]).max() / max(np.abs(ref[mode]).max(), 1e-12))

        inf = rel("inference")
        tr = rel("training") if ref["training"] is not None else None
        if inf > 1e-4 or (tr is not None and tr > 1e-4):
            bad += 1
        repairs = "; ".join(loaded.notes)[
            len("repaired legacy config while loading (the file is unchanged): ") :
        ]
        print(
            f"{fname:32} {alone:14} {'ok':6} {inf:10.1e} {'-' if tr is None else f'{tr:.1e}':>10}  "
            f"{repairs[:100]}"
        )
    print(
        f"\n{len(refs)} files: Keras 3 alone loads {alone_ok}; bngap loads "
        f"{len(refs) - bad} and matches Keras 2's outputs; {bad} problems"
    )
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="folder for the .h5 files (default: a temporary one)")
    ap.add_argument("--only", help="comma-separated architectures: " + ",".join(ARCHS))
    ap.add_argument("--stage", choices=["write", "compare"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    names = a.only.split(",") if a.only else list(ARCHS)
    if a.stage == "write":
        write_keras2(a.out, names)
        return 0
    if a.stage == "compare":
        return compare(a.out)
    out = a.out or Path(tempfile.mkdtemp(prefix="bngap-legacy-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    print(f"Keras 2 (tf_keras) writes the files to {out}")
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--stage",
            "write",
            "--out",
            str(out),
            "--only",
            ",".join(names),
        ],
        check=True,
        env={**env, "TF_USE_LEGACY_KERAS": "1"},
    )
    print("Keras 3 reads them")
    return subprocess.run(
        [sys.executable, __file__, "--stage", "compare", "--out", str(out)], env=env
    ).returncode


if __name__ == "__main__":
    sys.exit(main())
