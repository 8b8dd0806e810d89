"""Data sets as data (`bngap.data.from_stream`, `load_data` on saved
datasets and shards): a tf.data pipeline, a `tf.data.Dataset.save`
directory, .npz shards and a list of numpy batches give the same report as
the same samples in one .npz, for `check` and for `fix`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from reportdiffs import report_diffs

import bngap
from bngap.cli import main

SAME = (
    "output_gap",
    "metrics",
    "groups",
    "layers",
    "batchnorm",
    "findings",
    "first_flagged_batchnorm",
)


def _numbers(report) -> dict:
    d = report.to_dict() if not isinstance(report, dict) else report
    out = {k: d[k] for k in SAME}
    out["samples"] = d["data"]["samples"]
    out["batches"] = [d["data"]["batch_size"], d["data"]["batches"], d["data"]["last_batch_size"]]
    return out


def _diffs(a, b) -> list:
    """Where two reports' numbers differ: floats at relative 1e-6 (a model
    run compiled and one run eagerly sum in another order), the rest exactly."""
    return report_diffs(a, b, rtol=1e-6)


@pytest.fixture(scope="module")
def case(zoo):
    model, x, y = zoo.get("under_trained")
    return model, x, y, _numbers(bngap.check(model, x, y))


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


def test_reference_has_something_to_compare(case):
    *_, ref = case
    assert ref["samples"] == 64 and ref["batches"] == [32, 2, 32]
    assert ref["output_gap"]["relative_l2"] > 0.1 and ref["metrics"] is not None


@pytest.mark.parametrize("batching", [None, 32, 10])
def test_tf_data_pipeline_gives_the_same_report(case, tf, batching):
    model, x, y, ref = case
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if batching:
        ds = ds.batch(batching)  # re-batched to bngap's batch size: 10 gives the same batches as 32
    assert _diffs(_numbers(bngap.check(model, ds)), ref) == []


def test_tf_data_of_inputs_only_and_a_map(case, tf):
    model, x, y, ref = case
    ds = tf.data.Dataset.from_tensor_slices(x / 2.0).map(lambda t: t * 2.0).batch(7)
    r = bngap.check(model, ds)
    assert r.metrics is None and r.data.samples == 64
    assert _diffs(r.to_dict()["output_gap"], ref["output_gap"]) == []


def test_saved_dataset_directory_gives_the_same_report(case, tf, tmp_path, keras):
    model, x, y, ref = case
    tf.data.Dataset.from_tensor_slices((x, y)).batch(16).save(str(tmp_path / "saved"))
    assert _diffs(_numbers(bngap.check(model, str(tmp_path / "saved"))), ref) == []
    mpath = tmp_path / "m.keras"
    model.save(mpath)
    res = CliRunner().invoke(
        main, ["check", str(mpath), str(tmp_path / "saved"), "--format", "json", "-q"]
    )
    assert res.exit_code in (0, 1), res.output
    d = json.loads(res.stdout)
    assert _diffs(_numbers(d), ref) == []
    assert d["data"]["path"] == str(tmp_path / "saved")


def test_npz_shards_give_the_same_report(case, tmp_path):
    model, x, y, ref = case
    for k, (a, b) in enumerate([(0, 20), (20, 45), (45, 64)]):
        np.savez(tmp_path / f"shard-{k}.npz", x=x[a:b], y=y[a:b])
    assert _diffs(_numbers(bngap.check(model, str(tmp_path / "shard-*.npz"))), ref) == []
    mpath = tmp_path / "m.keras"
    model.save(mpath)
    paths = [str(tmp_path / f"shard-{k}.npz") for k in range(3)]
    for given in ([str(tmp_path / "shard-*.npz")], paths):
        res = CliRunner().invoke(main, ["check", str(mpath), *given, "--format", "json", "-q"])
        assert res.exit_code in (0, 1), res.output
        d = json.loads(res.stdout)
        assert _diffs(_numbers(d), ref) == []
        assert any(
            "read 3 shards in this order: shard-0.npz, shard-1.npz, shard-2.npz" in n
            for n in d["data"]["notes"]
        )


def test_list_of_numpy_batches_gives_the_same_report(case):
    model, x, y, ref = case
    batches = [(x[a : a + 9], y[a : a + 9]) for a in range(0, 64, 9)]
    assert _diffs(_numbers(bngap.check(model, batches)), ref) == []


def test_limit_and_infinite_datasets(case, tf):
    model, x, y, _ = case
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    with pytest.raises(bngap.BngapError, match=r"infinite \(repeat\(\)\); pass limit=N"):
        bngap.check(model, ds)
    r = bngap.check(model, ds, limit=40)
    assert r.data.samples == 40 and r.data.last_batch_size == 8
    assert _diffs(_numbers(r), _numbers(bngap.check(model, x[:40], y[:40]))) == []


def test_fix_on_a_tf_data_pipeline_equals_fix_on_arrays(case, tf, keras):
    model, x, y, _ = case

    def copy():
        m = keras.models.clone_model(model)
        m.set_weights(model.get_weights())
        return m

    a, b = copy(), copy()
    ra = bngap.fix(a, x, y)
    rb = bngap.fix(b, tf.data.Dataset.from_tensor_slices((x, y)).batch(5))
    assert rb.samples == 64 and rb.after.relative_l2 == ra.after.relative_l2
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb))
    assert ra.after.relative_l2 < 0.5 * ra.before.relative_l2


def test_dataset_with_labels_and_y_is_refused(case, tf):
    model, x, y, _ = case
    with pytest.raises(bngap.BngapError, match="labels come from the dataset itself"):
        bngap.check(model, tf.data.Dataset.from_tensor_slices(x), y)


def test_two_inputs_of_different_ranks_from_dict_elements(tf, keras):
    keras.utils.set_random_seed(3)
    L = keras.layers
    img, meta = keras.Input((6, 6, 2), name="img"), keras.Input((3,), name="meta")
    h = L.GlobalAveragePooling2D()(L.BatchNormalization()(L.Conv2D(4, 3)(img)))
    out = L.Dense(2)(L.Concatenate()([h, L.BatchNormalization()(L.Dense(4)(meta))]))
    model = keras.Model([img, meta], out)
    rng = np.random.default_rng(3)
    x = {
        "img": rng.normal(2, 3, (40, 6, 6, 2)).astype("float32"),
        "meta": rng.normal(-1, 2, (40, 3)).astype("float32"),
    }
    ref = _numbers(bngap.check(model, x))
    ds = tf.data.Dataset.from_tensor_slices(x)  # unbatched: ranks 3 and 1, one short of the model's
    assert _diffs(_numbers(bngap.check(model, ds)), ref) == []
    assert _diffs(_numbers(bngap.check(model, ds.batch(6))), ref) == []
    assert (
        _numbers(
            bngap.check(
                model,
                [
                    ({"img": x["img"][a : a + 9], "meta": x["meta"][a : a + 9]},)
                    for a in range(0, 40, 9)
                ],
            )
        )
        == ref
    )


def test_cli_shard_errors_are_one_line(tmp_path, zoo):
    mpath, _ = zoo.files("under_trained")
    res = CliRunner().invoke(main, ["check", str(mpath), str(tmp_path / "none-*.npz"), "-q"])
    assert (
        res.exit_code == 2
        and res.stderr.strip() == f"error: no data files match {tmp_path / 'none-*.npz'}"
    )
    (tmp_path / "notes.txt").write_text("x")
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 8, 8, 3), "float32"))
    res = CliRunner().invoke(
        main, ["check", str(mpath), str(tmp_path / "a.npz"), str(tmp_path / "notes.txt"), "-q"]
    )
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        "error: several DATA paths must all be .npz or .npy files. "
        f"Received: {tmp_path / 'notes.txt'}"
    )


def test_keras_py_dataset_gives_the_same_report(case, keras):
    model, x, y, ref = case

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return x[i * 13 : (i + 1) * 13], y[i * 13 : (i + 1) * 13]

    assert _diffs(_numbers(bngap.check(model, Batches())), ref) == []


def test_compressed_saved_dataset_and_a_failing_pipeline(case, tf, tmp_path):
    model, x, y, ref = case
    tf.data.Dataset.from_tensor_slices((x, y)).save(str(tmp_path / "gz"), compression="GZIP")
    assert _diffs(_numbers(bngap.check(model, str(tmp_path / "gz"))), ref) == []

    def broken():
        yield x[:8], y[:8]
        raise OSError("disk gone")

    class Again:
        def __iter__(self):
            return broken()

    with pytest.raises(bngap.BngapError, match="reading the Again failed: OSError: disk gone"):
        bngap.check(model, Again())
