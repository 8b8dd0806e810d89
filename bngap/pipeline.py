"""The check from start to finish: load, measure, analyse, advise, report.

`check()` is the engine behind both the command line and the Python API.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import DEFAULT_BATCH_SIZE, from_arrays, is_data_path, load_data
from .errors import BngapError, DataError
from .records import DataSummary, ModelSummary
from .results import Report, Thresholds
from .vocabulary import Kind


@dataclass(frozen=True)
class CheckOptions:
    """Settings of a check (the CLI's options)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    limit: int | None = None
    seed: int = 0
    effects: int | str | None = "auto"  # layers whose output effect is measured (None = all)
    thresholds: Thresholds = Thresholds()
    x_key: str | None = None
    y_key: str | None = None
    unsafe: bool = False
    custom_objects: str | None = None
    preprocess: str | None = None
    probe_preprocessing: bool = True
    backend: str | None = None  # tensorflow, jax or torch (default: KERAS_BACKEND, else tensorflow)
    save_outputs: str | None = None  # .npz of outputs for the cross-backend comparison (--backends)
    devices: int | None = None  # devices to spread batches over (default: all accelerators, else 1)


def _declared_batch_size(loaded, asked: int) -> int:
    """A model whose inputs declare a fixed batch size (Keras 2's
    batch_input_shape=(8, ...)) was trained with it: measure with it too, as
    training-mode BN statistics depend on the batch size."""
    declared = {s.shape[0] for s in loaded.inputs if s.shape and isinstance(s.shape[0], int)}
    if len(declared) != 1:
        return asked
    size = declared.pop()
    if size != asked:
        loaded.notes.append(
            f"the model declares a fixed batch size of {size} (fit() used it); "
            f"measured with batch size {size}, not {asked}"
        )
    return size


def _summarise_model(model, nodes, path: str, specs) -> ModelSummary:
    def shapes(ts):
        out = []
        for t in ts or []:
            with contextlib.suppress(AttributeError):
                out.append(tuple(t.shape))
        return tuple(out)

    try:
        outputs = shapes(getattr(model, "outputs", None))
    except (AttributeError, ValueError):
        outputs = ()
    return ModelSummary(
        path=path,
        name=model.name,
        class_name=type(model).__name__,
        layers=len(nodes),
        batchnorm_layers=sum(n.kind is Kind.BATCHNORM for n in nodes),
        dropout_like_layers=sum(n.kind in (Kind.DROPOUT, Kind.NOISE) for n in nodes),
        parameters=int(model.count_params()),
        input_shapes=tuple(tuple(s.shape) for s in specs),
        output_shapes=outputs,
        input_names=tuple(s.name for s in specs),
        output_names=tuple(getattr(model, "output_names", None) or ()),
    )


def _open_model(
    model: Any,
    *,
    unsafe: bool,
    custom_objects: str | None,
    compile: bool,
    say: Callable[[str], None],
):
    """A `LoadedModel` from a model file, or around a Keras model object."""
    from .backend import import_keras
    from .loading import LoadedModel, input_specs, load_model

    if isinstance(model, (str, os.PathLike)):
        say(f"loading model {model}")
        return load_model(model, unsafe=unsafe, custom_objects_file=custom_objects, compile=compile)
    keras = import_keras()
    if not isinstance(model, keras.Model):
        raise BngapError(
            f"expected a Keras model or a model file path. Received: {type(model).__name__}"
        )
    return LoadedModel(
        model=model,
        path="<in-memory>",
        inputs=input_specs(model),
        loss=getattr(model, "loss", None),
    )


def open_inputs(
    model: Any,
    x: Any,
    y: Any = None,
    *,
    unsafe: bool = False,
    custom_objects: str | None = None,
    x_key: str | None = None,
    y_key: str | None = None,
    limit: int | None = None,
    preprocess: str | None = None,
    compile: bool = False,
    status: Callable[[str], None] | None = None,
):
    """The model and the data, from paths or objects, validated against each
    other. Shared by `check` and `fix`.

    Returns:
        (LoadedModel, Dataset).
    """
    say = status or (lambda s: None)
    loaded = _open_model(
        model, unsafe=unsafe, custom_objects=custom_objects, compile=compile, say=say
    )
    outputs = list(getattr(loaded.model, "output_names", None) or [])
    per_output_y = None
    if len(outputs) > 1 and isinstance(y, (dict, list, tuple)):  # one label array per output
        per_output_y, y = y, None
    if is_data_path(x):  # a file, a folder, or several shards
        say(f"reading data {x if isinstance(x, (str, os.PathLike)) else ', '.join(map(str, x))}")
        data = load_data(
            x, loaded.inputs, x_key=x_key, y_key=y_key, limit=limit, preprocess=preprocess
        )
    elif x is None:
        raise DataError("no data given: pass the inputs (x)")
    else:
        data = from_arrays(x, y, loaded.inputs, limit=limit)
    if len(outputs) > 1:
        # per-output labels come from y, or from the keys of one .npz (not from shards)
        source = (
            per_output_y
            if per_output_y is not None
            else (x if isinstance(x, (str, os.PathLike)) else None)
        )
        _attach_output_labels(loaded, data, source, outputs, limit)
    return loaded, data


def _attach_output_labels(loaded, data, source, outputs: list[str], limit: int | None) -> None:
    """A multi-output model: labels per output name (npz keys y_<name> or the
    name itself, or a dict/list given as y), with the compiled loss weights
    that evaluate() applies to the total."""
    from .data import output_labels
    from .metrics import CompiledLoss

    labels = output_labels(source, outputs, len(data), limit)
    if labels is None:
        return
    data.y = labels
    weights = None
    config = getattr(getattr(loaded.model, "_compile_config", None), "config", None)
    if isinstance(config, dict):
        weights = config.get("loss_weights")
    elif loaded.path != "<in-memory>":
        from .loading import read_compiled_loss

        weights = read_compiled_loss(Path(loaded.path), "loss_weights")
    loaded.loss = CompiledLoss(loaded.loss, weights)


def _measurement_notes(m: Any) -> list[str]:
    """Remarks on what the passes left out: non-finite outputs, layers whose
    output effect was not measured. `m` is a `measurement.Measurements`."""
    notes = []
    for label, count in (
        ("training", m.output.nonfinite_train),
        ("inference", m.output.nonfinite_ref),
    ):
        if count:
            notes.append(
                f"the model's {label}-mode outputs contain {count} NaN/infinite values "
                "(left out of the gap); look for a layer dividing by zero, e.g. "
                "BatchNormalization with epsilon=0 on a constant channel"
            )
    if m.effects_skipped:
        notes.append(
            f"output effect measured for the {m.effects_computed} layer(s) with the largest "
            f"own contribution, not for {m.effects_skipped} more (each costs one more pass "
            "per batch; --effects N or --effects all)"
        )
    return notes


def _measure(net, nodes, data, keras, loaded, options: CheckOptions, loss, progress, say):
    """The passes over the data, on the devices asked for, with the batch size
    the model declares (else the one asked for)."""
    from .backend import device_names
    from .measurement import measure

    batch_size = _declared_batch_size(loaded, options.batch_size)
    devices = device_names(options.devices)
    on = f", {len(devices)} devices" if len(devices) > 1 else ""
    say(f"running {net.name}: {len(data)} samples, batch size {min(batch_size, len(data))}{on}")
    return measure(
        net,
        nodes,
        data,
        keras,
        batch_size=batch_size,
        seed=options.seed,
        effects=options.effects,
        loss_id=loss if loss is not None else loaded.loss,
        progress=progress or (lambda *a: None),
        devices=devices,
    )


def _summarise_data(data, m) -> DataSummary:
    return DataSummary(
        path=data.path,
        samples=len(data),
        has_labels=data.y is not None,
        input_shapes=tuple(data.shapes),
        batch_size=m.batch_size,
        batches=m.batches,
        last_batch_size=m.last_batch_size,
        notes=tuple(data.notes),
    )


# Long by its docstring and keyword-argument calls: the body is the check's stages in order
# (open, measure, records, preprocessing probe, diagnosis, report), each one call.
def check(
    model: Any,
    x: Any = None,
    y: Any = None,
    *,
    options: CheckOptions = CheckOptions(),
    progress: Callable[[int, int, str], None] | None = None,
    status: Callable[[str], None] | None = None,
    loss: Any = None,
) -> Report:
    """Measures and explains the train-vs-inference gap of a Keras model.

    Args:
        model: a Keras model, or the path of a `.keras` / `.h5` file.
        x: inputs (array, list or dict of arrays), or the path of an .npz /
            .npy file or image folder.
        y: labels (array), when `x` is an array; read from the file otherwise.
        options: see `CheckOptions`.
        progress: called as (done, total, label) while the passes run.
        status: called with a short line for each stage.
        loss: the loss to report with labels (default: the model's compiled
            loss, else one inferred from outputs and labels).

    Returns:
        A `Report`. The model's variables are left bit-identical.
    """
    from . import advice, analysis
    from .backend import environment, import_keras
    from .layertree import build_tree

    started = time.perf_counter()
    say = status or (lambda s: None)
    import_keras(options.backend)  # before anything imports Keras: the backend is fixed then
    if options.batch_size < 1:
        raise BngapError(f"--batch-size must be at least 1. Received: {options.batch_size}")
    loaded, data = open_inputs(
        model,
        x,
        y,
        unsafe=options.unsafe,
        custom_objects=options.custom_objects,
        x_key=options.x_key,
        y_key=options.y_key,
        limit=options.limit,
        preprocess=options.preprocess,
        status=say,
    )
    keras = import_keras()
    net = loaded.model
    nodes = build_tree(net, keras)
    if not nodes:
        raise BngapError(f"{loaded.path}: the model has no layers to check")
    m = _measure(net, nodes, data, keras, loaded, options, loss, progress, say)
    if options.save_outputs:
        from .sideoutput import save_outputs

        save_outputs(options.save_outputs, net, nodes, data, keras, batch_size=m.batch_size)
    layers = analysis.layer_records(m)
    bn = analysis.batchnorm_records(m)
    gap = analysis.output_gap(m)
    preprocessing = None
    if options.probe_preprocessing:
        from .preprocessing import probe_input_transforms

        preprocessing = probe_input_transforms(net, nodes, data, bn, keras, seed=options.seed)
    findings, notes = advice.diagnose(
        gap=gap,
        groups=m.groups,
        layers=layers,
        batchnorm=bn,
        leaks=m.leaks,
        batch_size=m.batch_size,
        last_batch_size=m.last_batch_size,
        samples=m.samples,
        preprocessing=preprocessing,
        fit_call=m.fit_call,
    )
    notes = list(loaded.notes) + list(m.notes) + list(notes) + _measurement_notes(m)
    summary = _summarise_model(net, nodes, loaded.path, loaded.inputs or [])
    dsum = _summarise_data(data, m)
    settings = {
        "batch_size": m.batch_size,
        "seed": options.seed,
        "effects": "all" if options.effects is None else options.effects,
        "limit": options.limit,
        "devices": m.devices,
    }
    return Report(
        model=summary,
        data=dsum,
        output_gap=gap,
        metrics=m.metrics,
        groups=m.groups,
        layers=layers,
        batchnorm=bn,
        findings=tuple(findings),
        leaks=tuple(m.leaks),
        preprocessing=preprocessing,
        thresholds=options.thresholds,
        settings=settings,
        notes=tuple(notes),
        environment=environment(),
        seconds=time.perf_counter() - started,
    )
