"""bngap.keras2 on hand-built Keras 2 configs: the one config walker, each
repair of `repair_config`, Keras 3's refused arguments, and the TF-op
stand-ins' name resolution and argument templates. The checked-in Keras 2
files go through the whole loader in test_loading.py."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from bngap.keras2.config import walk
from bngap.keras2.ops import fill, template
from bngap.keras2.repair import (
    describe_dropped,
    drop_refused_arguments,
    first_batch_shape,
    refused_arguments,
    repair_config,
)


def layer(class_name, name, inbound=(), **config):
    return {
        "class_name": class_name,
        "name": name,
        "config": {"name": name, **config},
        "inbound_nodes": [list(n) for n in inbound],
    }


def functional(name, layers, inputs, outputs):
    return {
        "class_name": "Functional",
        "name": name,
        "config": {
            "name": name,
            "layers": layers,
            "input_layers": inputs,
            "output_layers": outputs,
        },
    }


def keras_tensor(name, node=0, index=0):
    return {
        "class_name": "__keras_tensor__",
        "config": {"shape": [], "dtype": "float32", "keras_history": [name, node, index]},
    }


# ----------------------------------------------------------------- the walker


def test_walk_visits_every_dict_and_list_parents_first():
    cfg = {"a": [1, {"b": [2]}], "c": {"d": 3}}
    seen = list(walk(cfg))
    assert seen == [cfg, cfg["a"], cfg["a"][1], cfg["a"][1]["b"], cfg["c"]]
    assert list(walk(7)) == [] and list(walk("text")) == []


def test_walk_sees_what_the_caller_put_in_a_node():
    cfg = {"x": {"old": 1}}
    seen = []
    for node in walk(cfg):
        seen.append(json.dumps(node, sort_keys=True))
        if node is cfg:
            cfg["x"] = {"new": [1]}  # replaced before the walk reaches it
    assert seen[1:] == ['{"new": [1]}', "[1]"]


def test_walk_prunes_and_skips_keys():
    cfg = {"keep": [["ref", 1, 0, {"inner": [0]}]], "input_layers": [["ref", 1, 0]]}
    is_ref = lambda v: isinstance(v, list) and v[:1] == ["ref"]  # noqa: E731
    pruned = list(walk(cfg, prune=is_ref))
    assert cfg["keep"][0] in pruned and {"inner": [0]} not in pruned  # yielded, not entered
    skipped = list(walk(cfg, skip_keys={"input_layers"}))
    assert cfg["input_layers"] not in skipped and cfg["keep"][0][3] in skipped


# ------------------------------------------------------------------ repairs


def test_slashed_names_are_renamed_everywhere_they_are_referred_to():
    cfg = functional(
        "m",
        [
            layer("InputLayer", "in"),
            layer("Dense", "conv1/conv", [[["in", 0, 0, {}]]]),
            layer(
                "Dense", "conv1_conv", [[["conv1/conv", 0, 0, {}]]]
            ),  # the plain new name is taken
        ],
        [["in", 0, 0]],
        [["conv1_conv", 0, 0]],
    )
    changes = repair_config(cfg)
    layers = cfg["config"]["layers"]
    assert [(e["name"], e["config"]["name"]) for e in layers[1:]] == [
        ("conv1_conv_1", "conv1_conv_1"),
        ("conv1_conv", "conv1_conv"),
    ]
    assert layers[2]["inbound_nodes"] == [[["conv1_conv_1", 0, 0, {}]]]
    assert changes == [
        "renamed 1 layer whose name contains '/', which Keras 3 refuses "
        "(conv1/conv -> conv1_conv_1)"
    ]


def test_bare_sequential_layer_list_gets_the_keras3_layout():
    cfg = {"class_name": "Sequential", "config": [layer("Dense", "d", units=2)]}
    changes = repair_config(cfg)
    assert cfg["config"]["name"] == "sequential" and cfg["config"]["layers"][0]["name"] == "d"
    assert changes == ["converted an old Keras 2 Sequential layout (a bare layer list)"]


def _nested_twice() -> dict:
    """An outer model calling a nested functional model twice: Keras 2
    numbered those calls 1 and 2 (node 0 is the nested model's own)."""
    inner = functional(
        "inner",
        [layer("InputLayer", "x"), layer("Dense", "proj", [[["x", 0, 0, {}]]])],
        [["x", 0, 0]],
        [["proj", 0, 0]],
    )
    inner["inbound_nodes"] = [[["a", 0, 0, {}]], [["b", 0, 0, {}]]]
    add = layer("Add", "add", [[["inner", 1, 0, {}], ["inner", 2, 0, {}]]])
    return functional(
        "outer",
        [layer("InputLayer", "a"), layer("InputLayer", "b"), inner, add],
        [["a", 0, 0], ["b", 0, 0]],
        [["add", 0, 0], ["inner", 2, 0]],
    )


def test_calls_of_a_nested_model_are_renumbered_as_keras3_counts_them():
    cfg = _nested_twice()
    changes = repair_config(cfg)
    assert cfg["config"]["layers"][3]["inbound_nodes"] == [
        [["inner", 0, 0, {}], ["inner", 1, 0, {}]]
    ]
    # Keras 3 itself subtracts one for a nested functional model among the outputs
    assert cfg["config"]["output_layers"] == [["add", 0, 0], ["inner", 2, 0]]
    inner = cfg["config"]["layers"][2]["config"]
    assert inner["input_layers"] == ["x", 0, 0] and inner["output_layers"] == [
        "proj",
        0,
        0,
    ]  # unwrapped
    assert changes == [
        "renumbered the calls of nested model 'inner' as Keras 3 counts them",
        "read the single input/output of nested model 'inner' as Keras 2 did "
        "(not as one-element lists)",
    ]


def test_keras3_h5_configs_keep_their_node_numbers():
    cfg = _nested_twice()
    repair_config(cfg, keras2=False)
    assert cfg["config"]["layers"][3]["inbound_nodes"] == [
        [["inner", 1, 0, {}], ["inner", 2, 0, {}]]
    ]


def test_dtype_policies_axis_lists_and_refused_keras2_arguments():
    policy = {"class_name": "Policy", "config": {"name": "mixed_float16"}}
    cfg = functional(
        "m",
        [
            layer("InputLayer", "in"),
            layer("BatchNormalization", "bn", [[["in", 0, 0, {}]]], axis=[3], dtype=policy),
            layer(
                "LSTM",
                "lstm",
                [[["bn", 0, 0, {}]]],
                time_major=False,
                dtype={"class_name": "Policy", "config": {"name": "_infer"}},
            ),
        ],
        [["in", 0, 0]],
        [["lstm", 0, 0]],
    )
    changes = repair_config(cfg)
    bn, lstm = cfg["config"]["layers"][1:]
    assert bn["config"]["axis"] == 3 and bn["config"]["dtype"] == "mixed_float16"
    assert lstm["config"]["dtype"] == "float32" and "time_major" not in lstm["config"]
    assert changes == [
        "dropped Keras 2 argument 'time_major' of LSTM 'lstm'",
        "read Keras 2's dtype policies of 2 layers by name (e.g. mixed_float16)",
    ]


def test_tensors_passed_by_keyword_become_keras3_tensors():
    cfg = functional(
        "m",
        [
            layer("InputLayer", "q"),
            layer("InputLayer", "v"),
            layer(
                "MultiHeadAttention",
                "mha",
                [[["q", 0, 0, {"value": ["v", 0, 0], "use_causal_mask": False}]]],
            ),
            layer("LSTM", "lstm", [[["q", 0, 0, {}], ["h", 0, 0, {}], ["c", 0, 0, {}]]]),
            layer("InputLayer", "h"),
            layer("InputLayer", "c"),
        ],
        [["q", 0, 0], ["v", 0, 0]],
        [["mha", 0, 0]],
    )
    original = copy.deepcopy(cfg)
    changes = repair_config(cfg)
    mha, lstm = cfg["config"]["layers"][2:4]
    assert mha["inbound_nodes"] == [
        {
            "args": [keras_tensor("q")],
            "kwargs": {"value": keras_tensor("v"), "use_causal_mask": False},
        }
    ]
    # Keras 2 folded an RNN's initial_state into its inputs
    assert lstm["inbound_nodes"] == [
        {
            "args": [keras_tensor("q")],
            "kwargs": {"initial_state": [keras_tensor("h"), keras_tensor("c")]},
        }
    ]
    assert original["config"]["layers"][2]["inbound_nodes"][0][0][3]["value"] == [
        "v",
        0,
        0,
    ]  # a copy
    assert changes == [
        "passed the tensors that 'mha', 'lstm' take by keyword as tensors "
        "(Keras 3 reads them as lists from a Keras 2 file)"
    ]


def test_tf_op_layers_keep_tensors_apart_from_constants():
    cfg = functional(
        "m",
        [
            layer("InputLayer", "a"),
            layer("InputLayer", "b"),
            layer(
                "TFOpLambda",
                "tf.math.add",
                [["a", 0, 0, {"y": ["b", 0, 0], "name": None}]],
                function="math.add",
            ),
            layer(
                "TFOpLambda",
                "tf.math.subtract",
                [["_CONSTANT_VALUE", -1, 1.0, {"y": ["a", 0, 0]}]],
                function="math.subtract",
            ),
        ],
        [["a", 0, 0], ["b", 0, 0]],
        [["tf.math.add", 0, 0]],
    )
    changes = repair_config(cfg)
    add, sub = cfg["config"]["layers"][2:]
    assert add["inbound_nodes"] == [
        {"args": [keras_tensor("a")], "kwargs": {"bngap_tensors": [keras_tensor("b")]}}
    ]
    assert add["config"]["call_kwargs"] == {"y": {"__bngap_tensor__": 0}, "name": None}
    assert sub["inbound_nodes"] == [{"args": [[keras_tensor("a")]], "kwargs": {}}]  # 1.0 - a
    assert sub["config"]["first_constant"] == [1.0]
    assert changes == [
        "ran 2 Keras 2 TF-op layers (tf.math.add, tf.math.subtract) with bngap's stand-in"
    ]


def test_sequential_input_declared_on_its_first_layer_is_made_explicit():
    cfg = {
        "class_name": "Sequential",
        "config": {
            "name": "s",
            "layers": [layer("Dense", "dense", batch_input_shape=[None, 5], units=1)],
        },
    }
    assert first_batch_shape(cfg) == (None, 5)
    changes = repair_config(cfg)
    first, dense = cfg["config"]["layers"]
    assert first["class_name"] == "InputLayer" and first["config"]["batch_input_shape"] == [None, 5]
    assert "batch_input_shape" not in dense["config"]
    assert changes == [
        "declared the Sequential's input (None, 5) explicitly (Keras 2 kept it on layer 'dense')"
    ]


def test_a_keras3_config_needs_no_repair():
    cfg = functional(
        "m",
        [layer("InputLayer", "in"), layer("Dense", "d", [[["in", 0, 0, {}]]], axis=-1)],
        ["in", 0, 0],
        ["d", 0, 0],
    )
    before = copy.deepcopy(cfg)
    assert repair_config(cfg) == [] and cfg == before


# ---------------------------------------------------- arguments Keras 3 refuses


@pytest.mark.parametrize(
    "message,expected",
    [
        (
            "Unrecognized keyword arguments passed to DepthwiseConv2D: {'groups': 1}",
            ("DepthwiseConv2D", ["groups"]),
        ),
        (
            "Exception encountered: Unrecognized keyword arguments passed to SeparableConv2D: {'groups': 1, "
            "'kernel_initializer': {'module': 'keras.initializers', 'class_name': 'GlorotUniform', "
            "'config': {'seed': None}}, 'padding': 'same', 'kernel_constraint': None}",
            ("SeparableConv2D", ["groups", "kernel_initializer", "padding", "kernel_constraint"]),
        ),
        ("Unrecognized keyword arguments passed to LSTM: {}", None),
        ("some other error", None),
    ],
)
def test_refused_arguments_are_read_from_keras_message(message, expected):
    assert refused_arguments(message) == expected


def test_refused_arguments_are_dropped_from_every_layer_of_the_class():
    init = {"class_name": "GlorotUniform", "config": {"seed": None}}
    cfg = functional(
        "m",
        [
            layer("DepthwiseConv2D", "a", groups=1, kernel_initializer=init),
            layer("DepthwiseConv2D", "b", groups=1),
            layer("Conv2D", "c", groups=1),
        ],
        [],
        [],
    )
    dropped = drop_refused_arguments(cfg, "DepthwiseConv2D", ["groups", "kernel_initializer"])
    assert dropped == {"groups": [1], "kernel_initializer": [init]}
    assert [("groups" in e["config"]) for e in cfg["config"]["layers"]] == [False, False, True]
    assert describe_dropped(dropped) == "'groups'=1, 'kernel_initializer'"


# ---------------------------------------------------------- TF-op stand-ins


def test_template_and_fill_are_inverse():
    kwargs = {
        "y": keras_tensor("b"),
        "perm": [0, 2, 1],
        "pair": [keras_tensor("c"), 3.0],
        "name": None,
    }
    flat: list = []
    slots = template(kwargs, flat)
    assert flat == [keras_tensor("b"), keras_tensor("c")]
    assert slots == {
        "y": {"__bngap_tensor__": 0},
        "perm": [0, 2, 1],
        "pair": [{"__bngap_tensor__": 1}, 3.0],
        "name": None,
    }
    real = [np.ones(2), np.zeros(2)]
    filled = fill(slots, real)
    assert filled["y"] is real[0] and filled["pair"][0] is real[1] and filled["perm"] == [0, 2, 1]


@pytest.mark.parametrize(
    "function",
    [
        "io.write_file",
        "math.__class__",
        "nn.__loader__.load_module",
        "math._private",
        "debugging.check_numerics",
        "py_function",
        "__operators__.__class__",
        # through a class to old Keras deserialisation without safe mode
        "nn.RNNCellDropoutWrapper.from_config",
        "linalg.LinearOperatorFullMatrix",
        "compat.v1.io.write_file",
    ],
)
def test_tf_op_names_outside_tensor_math_are_refused_in_safe_mode(keras, function):
    from bngap.keras2.ops import UnsafeOpError, resolve

    with pytest.raises(UnsafeOpError, match="safe mode does not run|not a TensorFlow function"):
        resolve(function, unsafe=False)


@pytest.mark.parametrize(
    "function",
    [
        "compat.v1.shape",
        "compat.v1.pad",
        "compat.v1.norm",
        "stop_gradient",
        "compat.v1.transpose",
        "image.resize",
        "__operators__.getitem",
    ],
)
def test_tensor_math_keras2_records_is_allowed_in_safe_mode(keras, function):
    from bngap.keras2.ops import resolve

    assert callable(resolve(function, unsafe=False))


@pytest.mark.parametrize(
    "function,x,expected",
    [
        ("math.multiply", [1.0, 2.0], [0.5, 1.0]),
        ("nn.relu6", [-1.0, 7.0], [0.0, 6.0]),
        ("__operators__.add", [1.0, 2.0], [1.5, 2.5]),
    ],
)
def test_tf_op_names_of_tensor_math_resolve_to_tensorflow(keras, function, x, expected):
    from bngap.keras2.ops import resolve

    fn = resolve(function, unsafe=False)
    args = () if function == "nn.relu6" else (0.5,)
    tensor = keras.ops.convert_to_tensor(np.asarray(x, "float32"))
    np.testing.assert_allclose(np.asarray(fn(tensor, *args)), expected)
