"""bngap from Python: check a model, fix it, check again; and watch the gap
during training with the GapMonitor callback.

    python examples/notebook_check.py
"""

import bngap
from bngap.backend import import_keras
from bngap.demo import build_and_train, make_data

x, y = make_data()
model = build_and_train(x, y)  # 16 updates of the BN statistics

report = bngap.check(model, x, y)
print(report.ok, round(report.output_gap.relative_l2, 3))
print(report.findings[0].cause.value, report.findings[0].layer)
print(report.metrics.train["accuracy"], report.metrics.eval["accuracy"])

result = bngap.fix(model, x, y)  # updates the BN statistics in place
print(round(result.before.relative_l2, 3), "->", round(result.after.relative_l2, 3))
print(bngap.check(model, x, y).ok)

# In a training script: the gap per epoch, in the progress line and history.
keras = import_keras()
keras.utils.set_random_seed(0)
L = keras.layers
model = keras.Sequential(
    [
        keras.Input((16, 16, 3)),
        L.Conv2D(16, 3),
        L.BatchNormalization(),
        L.ReLU(),
        L.GlobalAveragePooling2D(),
        L.Dense(3, activation="softmax"),
    ]
)
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
monitor = bngap.GapMonitor(x, warn_above=0.1)
model.fit(x, y, epochs=3, batch_size=24, callbacks=[monitor], verbose=2)
print(monitor.history)
