"""The JSON form of records: dataclasses, enums and numpy scalars to
JSON-ready values, and back by their field types.

Plain Python. `plain` is what `to_dict()` writes for most records, the
`*_json` functions the report's summary sections (their keys spelled out, as
the contract names them); `build` is what `from_dict()` reads; NaN and
infinities become null (`num`).
"""

from __future__ import annotations

import enum
import math
import types
import typing
from collections.abc import Collection
from dataclasses import fields, is_dataclass
from typing import Any

from .records import DataSummary, Metrics, ModelSummary, OutputGap

SCHEMA_VERSION = "1"


def opt_float(v) -> float | None:
    return None if v is None else float(v)


def build(cls, d: dict):
    """A dataclass record from its `_plain` form: enums, nested records and
    tuples restored from their field types; keys the record does not know
    (written by a newer bngap) are ignored, missing ones take defaults."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(d).__name__}")
    return cls(**fields_by_type(cls, d))


def fields_by_type(cls, d: dict, skip: Collection[str] = ()) -> dict:
    """The fields of record class `cls` that `d` holds (but those in `skip`),
    each typed by its annotation: the keyword arguments `build` passes."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: typed(hints[f.name], d[f.name])
        for f in fields(cls)
        if f.name not in skip and f.name in d
    }


def typed(tp, v):
    """`v` (a JSON value) as the annotated type `tp` expects it."""
    if v is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return typed(options[0], v) if len(options) == 1 else v
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(typed(args[0], x) for x in v)
        if args:
            return tuple(typed(a, x) for a, x in zip(args, v))
        return tuple(tuple(x) if isinstance(x, list) else x for x in v)
    if isinstance(tp, type):
        if is_dataclass(tp):
            return build(tp, v)
        if issubclass(tp, enum.Enum):
            return tp(v)
        if tp is tuple:  # shapes and the like: lists all the way down become tuples
            return tuple(tuple(x) if isinstance(x, list) else x for x in v)
    return v


def num(v):
    """Plain Python float for JSON; NaN and infinities become null."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v
    f = float(v)
    return f if math.isfinite(f) else None


def plain(obj):
    """Dataclasses, enums, tuples and numpy scalars to JSON-ready values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, (int, float)):
        return num(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return plain(obj.item())
    return str(obj)


def model_json(m: ModelSummary) -> dict[str, Any]:
    """The report's `model` section."""
    return {
        "path": m.path,
        "name": m.name,
        "class_name": m.class_name,
        "layers": m.layers,
        "batchnorm_layers": m.batchnorm_layers,
        "dropout_like_layers": m.dropout_like_layers,
        "parameters": m.parameters,
        "input_shapes": [list(s) for s in m.input_shapes],
        "output_shapes": [list(s) for s in m.output_shapes],
        "input_names": list(m.input_names),
        "output_names": list(m.output_names),
    }


def data_json(d: DataSummary) -> dict[str, Any]:
    """The report's `data` section."""
    return {
        "path": d.path,
        "samples": d.samples,
        "has_labels": d.has_labels,
        "input_shapes": [list(s) for s in d.input_shapes],
        "batch_size": d.batch_size,
        "batches": d.batches,
        "last_batch_size": d.last_batch_size,
        "notes": list(d.notes),
    }


def gap_json(g: OutputGap) -> dict[str, Any]:
    """The report's `output_gap` section."""
    return {
        "relative_l2": num(g.relative_l2),
        "max_abs": num(g.max_abs),
        "top1_agreement": num(g.top1_agreement),
        "per_output": [plain(e) for e in g.per_output],
    }


def metrics_json(m: Metrics | None) -> dict[str, Any] | None:
    """The report's `metrics` section (null without labels)."""
    if m is None:
        return None
    return {
        "train": {k: num(v) for k, v in m.train.items()},
        "eval": {k: num(v) for k, v in m.eval.items()},
        "loss_name": m.loss_name,
        "source": m.source,
        "per_output": [plain(o) for o in m.per_output],
    }
