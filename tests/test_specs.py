"""bngap.specs: the vocabulary that data reading, the preprocessing probe and
the advice share. No TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bngap.images import parse_preprocess
from bngap.preprocessing import candidate_transforms
from bngap.specs import PREPROCESS_FLAG, InputSpec


def test_input_spec_is_a_frozen_record():
    spec = InputSpec("image", (None, 4, 4, 3), "float32")
    assert spec == InputSpec("image", (None, 4, 4, 3), "float32")
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(PREPROCESS_FLAG))
def test_each_named_flag_applies_the_transform_the_probe_tried(name):
    """The advice tells the user `--preprocess FLAG` for the probe's best
    transform: the flag must compute that very transform on 0..255 pixels."""
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 3, 3, 3)).astype(np.float32)
    tried = candidate_transforms(pixels)
    assert name in tried
    np.testing.assert_allclose(
        parse_preprocess(PREPROCESS_FLAG[name])(pixels), tried[name](pixels), rtol=1e-5, atol=1e-4
    )


def test_advice_does_not_pull_in_data_reading_or_the_loader():
    code = (
        "import sys, bngap.advice; "
        "bad = {'bngap.loading', 'bngap.data', 'bngap.preprocessing', 'tensorflow', 'keras'}; "
        "assert not bad & set(sys.modules), bad & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
