"""Writes the small legacy Keras 2 model files the tests load.

They are checked in; run this again only to regenerate them:

    pip install tf-keras
    python tests/data/make_legacy_models.py [OUT_DIR]   # default: tests/data

Regenerating is deterministic (seeded) except for the zip timestamps inside
k2_sequential.keras: write to a temporary OUT_DIR and copy over only the files
you changed.

It uses the `tf_keras` package (Keras 2, what `tf.keras` was before Keras 3)
in a separate process from Keras 3. What Keras 3.15 does with each file
without bngap's repairs:

- k2_sequential_bn.h5: loads and runs, input (None, 8, 8, 3), output (N, 3)
  (Keras 2 Sequential with input_shape on its first layer; BN statistics moved
  by one epoch of training).
- k2_functional_bn.h5: loads and runs, input (None, 6) named 'features',
  output (N, 2).
- k2_lstm.h5: refused, "Unrecognized keyword arguments passed to LSTM:
  {'time_major': False}" (with safe_mode on or off); bngap drops the argument
  in memory and it runs, input (None, 68, 21), output (N, 2).
- k2_lambda.h5: refused by safe mode ("Requested the deserialization of a
  `Lambda` layer whose `function` is a Python lambda ... passing
  `safe_mode=False`"); loads and runs with safe_mode=False (bngap: --unsafe).
  Its lambda doubles its input and, when the environment variable
  BNGAP_LAMBDA_MARKER is set, creates that file: tests/test_loading.py uses it
  to prove that a refused load runs none of the file's code. The lambda is
  stored as marshalled CPython bytecode, which only the Python minor version
  that wrote it (3.11 here) can load: regenerate it after a Python upgrade.
- k2_no_input_layer.h5: an older Keras 2 Sequential config with no
  InputLayer entry, its shape only in the first layer's batch_input_shape.
  Keras 3 fails ("Shapes used to initialize variables must be fully-defined
  ... shape=(None,) for variable path='sequential.../bn/gamma'": Keras 3 turns
  batch_input_shape (None, 5) into input_shape, so the Dense sees
  (None, None, 5)); bngap declares the input explicitly, in memory, and it
  runs, input (None, 5), output (N, 1).
- k2_applications_like.h5: a small MobileNet-like functional base nested in
  a Sequential, saved after fit(). Keras 3 alone refuses it at the first of
  its quirks ('/' in layer names, DepthwiseConv2D's groups=1,
  SeparableConv2D's kernel_* arguments, BN axis [3] inside a nested model,
  unknown class TFOpLambda, and the nested model's one-element output list
  that feeds the next layer two tensors). k2_applications_like.expected.npz
  holds Keras 2's own inference outputs on four inputs: bngap's load must
  reproduce them.
- k2_keyword_tensors.h5: MultiHeadAttention called as mha(q, v) and an LSTM
  given initial_state=[h0, c0]. Keras 2 wrote the tensors passed by keyword
  as [layer, node, tensor] lists inside the node's kwargs; Keras 3 alone
  hands them to the layer as lists ("MultiHeadAttention.build() missing 1
  required positional argument: 'value_shape'"). The .expected.npz holds
  Keras 2's inference outputs.
- k2_shared_sequential.h5: a Sequential built with an input shape and called
  on two inputs. Keras 2 counted its own node as 0, so the calls are nodes 1
  and 2; Keras 3 counts them 0 and 1 and alone fails ("The graph of the
  Functional model either has loops or disconnected nodes").
- k2_nested_calls.h5: a functional model called twice inside another
  (nodes 1 and 2 in the file; Keras 3 alone fails with "disconnected
  nodes") and a Bidirectional LSTM with an initial state (Keras 2 folded it
  into the inputs and wrote initial_state=None, constants=None).
- k2_tf_op_arguments.h5: TF ops with constants beside tensors (`1.0 - x`,
  tf.gather with tensor indices and axis=1, tf.matmul(..., transpose_b=True),
  tf.reshape to [tf.shape(x)[0], 8], tf.pad recorded as compat.v1.pad).
- k2_mixed_float16.h5: mixed_float16 layers, each dtype written as a Keras 2
  Policy object; Keras 3 alone fails ("'str' object has no attribute
  'quantization_mode'").
- k2_tf_op_outside_allowlist.h5: tf.debugging.check_numerics on an input
  (a TFOpLambda that is not pure tensor math): refused in safe mode, runs
  with --unsafe.
- k2_sequential.keras: the Keras 2 .keras format; Keras 3 fails with "could
  not be deserialized properly"; bngap says which Keras wrote it and how to
  convert it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent

# Compiled from a string so that the marshalled bytecode names no file path of
# the machine that wrote it. Doubles its input; creates $BNGAP_LAMBDA_MARKER
# if that is set, so a test can tell whether the code ran.
MARKER_LAMBDA = (
    'lambda t: ([open(p, "w").close() for p in '
    '[__import__("os").environ.get("BNGAP_LAMBDA_MARKER")] if p], t * 2)[1]'
)


def main() -> None:
    import h5py
    import numpy as np
    import tf_keras as k2

    HERE.mkdir(parents=True, exist_ok=True)
    k2.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    L = k2.layers

    m = k2.Sequential(
        [
            L.Conv2D(4, 3, input_shape=(8, 8, 3), name="conv"),
            L.BatchNormalization(name="bn"),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dropout(0.2, name="drop"),
            L.Dense(3, activation="softmax", name="head"),
        ]
    )
    m.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    x = rng.normal(2, 3, (64, 8, 8, 3)).astype("float32")
    y = np.eye(3)[rng.integers(0, 3, 64)]
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    m.save(HERE / "k2_sequential_bn.h5")

    inp = k2.Input((6,), name="features")
    h = L.Dense(8, name="dense")(inp)
    h = L.BatchNormalization(name="bn")(h)
    out = L.Dense(2, name="out")(L.ReLU()(h))
    f = k2.Model(inp, out, name="functional_bn")
    f.compile("adam", "mse")
    f.fit(
        rng.normal(1, 2, (64, 6)).astype("float32"), rng.normal(0, 1, (64, 2)), epochs=1, verbose=0
    )
    f.save(HERE / "k2_functional_bn.h5")

    k2.Sequential([L.LSTM(5, input_shape=(68, 21), name="lstm"), L.Dense(2, name="out")]).save(
        HERE / "k2_lstm.h5"
    )

    i2 = k2.Input((3,))
    double = eval(compile(MARKER_LAMBDA, "<k2_lambda>", "eval"))
    k2.Model(i2, L.Lambda(double, name="double")(i2)).save(HERE / "k2_lambda.h5")

    # Keras 2.13+ could also write the .keras format, which Keras 3 cannot read.
    k2.Sequential(
        [
            L.Dense(4, input_shape=(5,), name="dense"),
            L.BatchNormalization(name="bn"),
            L.Dense(1, name="out"),
        ]
    ).save(HERE / "k2_sequential.keras")

    # Older Keras 2 wrote a Sequential's layers without an InputLayer entry.
    path = HERE / "k2_no_input_layer.h5"
    k2.Sequential(
        [
            L.Dense(4, input_shape=(5,), name="dense"),
            L.BatchNormalization(name="bn"),
            L.Dense(1, name="out"),
        ]
    ).save(path)
    with h5py.File(path, "r+") as fh:
        cfg = json.loads(fh.attrs["model_config"])
        cfg["config"]["layers"] = [
            lay for lay in cfg["config"]["layers"] if lay["class_name"] != "InputLayer"
        ]
        fh.attrs["model_config"] = json.dumps(cfg)

    _applications_like(k2, L, rng)


def _applications_like(k2, L, rng) -> None:
    """The quirks of real keras.applications models saved by Keras 2, in one
    small model: a functional base nested in a Sequential (transfer learning),
    names with '/', DepthwiseConv2D and SeparableConv2D, BN axis lists, and
    raw TF ops on Keras tensors (TFOpLambda / SlicingOpLambda)."""
    import numpy as np
    import tensorflow as tf

    inp = k2.Input((12, 12, 3), name="image")
    x = inp / 127.5 - 1.0  # TFOpLambda x2
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv1/conv")(x)
    x = L.BatchNormalization(name="conv1/bn")(x)
    x = tf.nn.relu6(x)  # TFOpLambda
    a = L.DepthwiseConv2D(3, padding="same", name="block1/dw")(x)
    a = L.BatchNormalization(name="block1/dw_bn")(a)
    b = L.SeparableConv2D(8, 3, padding="same", name="block1/sep")(x)
    x = a + b  # tensor passed as y=
    x = x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)  # MobileNetV3's hard-swish
    x = tf.concat([x, a], axis=-1)
    x = x[:, :, :, :12]  # SlicingOpLambda
    x = L.BatchNormalization(name="head/bn")(x)
    base = k2.Model(inp, x, name="tiny_mobile")
    model = k2.Sequential(
        [base, L.GlobalAveragePooling2D(), L.Dropout(0.2), L.Dense(3, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    images = rng.uniform(0, 255, (48, 12, 12, 3)).astype("float32")
    model.fit(images, rng.integers(0, 3, 48), epochs=2, batch_size=16, verbose=0)
    model.save(HERE / "k2_applications_like.h5")
    # The truth bngap is tested against: what Keras 2 itself computes.
    probe = images[:4]
    np.savez(
        HERE / "k2_applications_like.expected.npz",
        x=probe,
        inference=model(probe, training=False).numpy(),
        base_inference=base(probe, training=False).numpy(),
    )

    # Tensors passed by keyword: attention's value, an LSTM's initial state.
    seq = k2.Input((6, 4), name="sequence")
    q, v = L.Dense(8, name="q")(seq), L.Dense(8, name="v")(seq)
    att = L.MultiHeadAttention(2, 4, name="mha")(q, v)
    summary = L.GlobalAveragePooling1D(name="pool")(seq)
    h0, c0 = L.Dense(5, name="h0")(summary), L.Dense(5, name="c0")(summary)
    h = L.LSTM(5, name="lstm")(att, initial_state=[h0, c0])
    kw = k2.Model(
        seq, L.Dense(2, name="out")(L.BatchNormalization(name="bn")(h)), name="keyword_tensors"
    )
    kw.compile("adam", "mse")
    sequences = rng.normal(0, 1, (32, 6, 4)).astype("float32")
    kw.fit(sequences, rng.normal(0, 1, (32, 2)), epochs=1, batch_size=16, verbose=0)
    kw.save(HERE / "k2_keyword_tensors.h5")
    np.savez(
        HERE / "k2_keyword_tensors.expected.npz",
        x=sequences[:4],
        inference=kw(sequences[:4], training=False).numpy(),
    )

    # A Sequential built with an input shape (Keras 2 gave it a node of its
    # own), shared by two inputs: its calls are nodes 1 and 2 in the file.
    tower = k2.Sequential(
        [L.Dense(4, input_shape=(3,), name="proj"), L.BatchNormalization(name="bn")], name="tower"
    )
    left, right = k2.Input((3,), name="left"), k2.Input((3,), name="right")
    siamese = k2.Model(
        [left, right], L.Dense(1, name="out")(L.Concatenate()([tower(left), tower(right)]))
    )
    siamese.compile("adam", "mse")
    pair = [rng.normal(1, 2, (32, 3)).astype("float32") for _ in range(2)]
    siamese.fit(pair, rng.normal(0, 1, (32, 1)), epochs=1, batch_size=16, verbose=0)
    siamese.save(HERE / "k2_shared_sequential.h5")
    np.savez(
        HERE / "k2_shared_sequential.expected.npz",
        left=pair[0][:4],
        right=pair[1][:4],
        inference=siamese([pair[0][:4], pair[1][:4]], training=False).numpy(),
    )

    # A functional model shared by two inputs (its calls are nodes 1 and 2 in
    # the file) and a Bidirectional LSTM given an initial state.
    fi = k2.Input((3,), name="feature")
    shared = k2.Model(
        fi, L.BatchNormalization(name="bn")(L.Dense(4, name="proj")(fi)), name="shared"
    )
    seq2 = k2.Input((5, 3), name="steps")
    state = L.Dense(4, name="state")(L.Flatten()(seq2))
    rnn = L.Bidirectional(L.LSTM(4, name="lstm"), name="bidi")(seq2, initial_state=[state] * 4)
    calls = k2.Model(
        [fi, seq2], L.Concatenate()([shared(fi), shared(fi * 2.0), rnn]), name="nested_calls"
    )
    calls.compile("adam", "mse")
    feats, steps = (
        rng.normal(1, 2, (32, 3)).astype("float32"),
        rng.normal(0, 1, (32, 5, 3)).astype("float32"),
    )
    calls.fit([feats, steps], rng.normal(0, 1, (32, 16)), epochs=1, batch_size=16, verbose=0)
    calls.save(HERE / "k2_nested_calls.h5")
    np.savez(
        HERE / "k2_nested_calls.expected.npz",
        feature=feats[:4],
        steps=steps[:4],
        inference=calls([feats[:4], steps[:4]], training=False).numpy(),
    )

    # Mixed precision: Keras 2 wrote each layer's dtype as a Policy object.
    k2.mixed_precision.set_global_policy("mixed_float16")
    try:
        mp_in = k2.Input((8, 8, 3), name="image")
        h = L.ReLU()(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(mp_in)))
        mixed = k2.Model(
            mp_in,
            L.Dense(3, activation="softmax", dtype="float32", name="out")(
                L.GlobalAveragePooling2D()(h)
            ),
            name="mixed",
        )
    finally:
        k2.mixed_precision.set_global_policy("float32")
    mixed.compile("adam", "sparse_categorical_crossentropy")
    mp_x = rng.normal(2, 3, (32, 8, 8, 3)).astype("float32")
    mixed.fit(mp_x, rng.integers(0, 3, 32), epochs=1, batch_size=16, verbose=0)
    mixed.save(HERE / "k2_mixed_float16.h5")
    np.savez(
        HERE / "k2_mixed_float16.expected.npz",
        x=mp_x[:4],
        inference=mixed(mp_x[:4], training=False).numpy(),
    )

    # TF ops with constants beside tensors: a constant first argument,
    # tensor keywords with constant ones, a keyword mixing both, compat.v1 names.
    va = k2.Input((4, 3), name="va")
    idx = k2.Input((2,), dtype="int32", name="idx")
    left = 1.0 - va  # ["_CONSTANT_VALUE", -1, 1.0]
    picked = tf.gather(left, idx, axis=1, batch_dims=1)  # indices tensor, axis constant
    att = tf.matmul(picked, va, transpose_b=True)  # b tensor, transpose_b constant
    flat = tf.reshape(att, [tf.shape(att)[0], 8])  # shape mixes a tensor and an int
    padded = tf.pad(flat, [[0, 0], [1, 1]])  # recorded as compat.v1.pad
    ops = k2.Model([va, idx], L.Dense(2, name="out")(padded), name="tf_op_arguments")
    ops_x = rng.normal(0, 1, (4, 4, 3)).astype("float32")
    ops_i = rng.integers(0, 4, (4, 2)).astype("int32")
    ops.save(HERE / "k2_tf_op_arguments.h5")
    np.savez(
        HERE / "k2_tf_op_arguments.expected.npz",
        va=ops_x,
        idx=ops_i,
        inference=ops([ops_x, ops_i], training=False).numpy(),
    )

    # A TF op outside the pure-math allowlist (harmless, but safe mode refuses it).
    i3 = k2.Input((4,), name="values")
    k2.Model(i3, L.Dense(2, name="out")(tf.debugging.check_numerics(i3, "bad"))).save(
        HERE / "k2_tf_op_outside_allowlist.h5"
    )


if __name__ == "__main__":
    main()
