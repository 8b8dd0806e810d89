"""Lint rules on BN settings: momentum in PyTorch's convention or at 1, unclipped renorm."""

from __future__ import annotations

import numpy as np

from ..advice.common import bn_count, name_list, verb
from ..linting import LintFinding, Rule
from ..vocabulary import Severity
from .subject import Subject

TORCH_MOMENTUM = 0.5  # below this a Keras momentum is most likely PyTorch's convention


def momentum_torch_convention(s: Subject) -> list[LintFinding]:
    """`momentum_torch_convention`: a momentum below 0.5, the weight of the new value."""
    torch = [b for b in s.batchnorm if float(b.layer.momentum) < TORCH_MOMENTUM]
    if not torch:
        return []
    ms = sorted({float(b.layer.momentum) for b in torch})
    m = ms[0]
    return [
        LintFinding(
            Rule.MOMENTUM_TORCH_CONVENTION,
            Severity.WARN,
            torch[0].path,
            f"{bn_count(len(torch))} ({name_list(b.path for b in torch)}) "
            f"{verb(len(torch), 'has', 'have')} momentum "
            f"{', '.join(f'{v:g}' for v in ms)}. In Keras momentum is the weight of the old value "
            "(moving = momentum * moving + (1 - momentum) * batch), so the moving statistics "
            f"follow the last batch or two; PyTorch's momentum={m:g} is the weight of the new "
            f"value, the Keras equivalent of momentum={1 - m:g}. Typical of a ported model.",
            f"Use momentum = 1 - (PyTorch momentum), e.g. {1 - m:g}, or the Keras default 0.99.",
            tuple(b.path for b in torch),
            {"momenta": ms},
        )
    ]


def momentum_one(s: Subject) -> list[LintFinding]:
    """`momentum_one`: a momentum of 1 or more, so the statistics never move
    (a fail when such a layer is trainable, a warning while it is frozen)."""
    stuck = [b for b in s.batchnorm if not float(b.layer.momentum) < 1.0]
    if not stuck:
        return []
    trainable = [b for b in stuck if b.layer.trainable]
    return [
        LintFinding(
            Rule.MOMENTUM_ONE,
            Severity.FAIL if trainable else Severity.WARN,
            stuck[0].path,
            f"{bn_count(len(stuck))} ({name_list(b.path for b in stuck)}) "
            f"{verb(len(stuck), 'has', 'have')} momentum "
            f"{', '.join(sorted({f'{float(b.layer.momentum):g}' for b in stuck}))}: the moving "
            "statistics never move towards the data's (at momentum 1 they keep their old value; "
            "above 1 they diverge), "
            + (
                "so inference mode normalises with whatever they hold while training mode uses "
                "each batch's statistics."
                if trainable
                else "so they will not follow the data if the layers are ever unfrozen. They are "
                "frozen (trainable=False) now: both modes normalise with the stored statistics."
            ),
            "Set momentum below 1 (the Keras default is 0.99) and re-estimate the statistics: "
            "bngap fix MODEL DATA -o fixed.keras.",
            tuple(b.path for b in stuck),
            {"momenta": sorted({float(b.layer.momentum) for b in stuck})},
        )
    ]


def renorm_unclipped(s: Subject) -> list[LintFinding]:
    """`renorm_unclipped`: batch renormalization with no clipping bound, so
    neither mode normalises with the batch's own statistics."""
    hits = [
        b
        for b in s.batchnorm
        if getattr(b.layer, "renorm", False)
        and not any(
            v is not None for v in (getattr(b.layer, "renorm_clipping", None) or {}).values()
        )
    ]
    if not hits:
        return []
    apart = {}
    for b in hits:
        rm = getattr(b.layer, "renorm_mean", None)
        rs = getattr(b.layer, "renorm_stddev", None)
        if rm is None or rs is None:
            continue
        std = np.sqrt(np.maximum(b.var, 0) + float(b.layer.epsilon))
        d = np.abs(np.asarray(rm.numpy(), np.float64).ravel() - b.mean) / std
        r = np.abs(np.log2(np.maximum(np.asarray(rs.numpy(), np.float64).ravel(), 1e-30) / std))
        apart[b.path] = float(max(d.max(initial=0.0), r.max(initial=0.0)))
    return [
        LintFinding(
            Rule.RENORM_UNCLIPPED,
            Severity.WARN,
            hits[0].path,
            f"{bn_count(len(hits))} ({name_list(b.path for b in hits)}) "
            f"{verb(len(hits), 'uses', 'use')} batch renormalization "
            "without clipping (renorm_clipping empty). Then training mode normalises with the "
            "renorm statistics (renorm_mean, renorm_stddev) and inference mode with the moving "
            "ones (moving_mean, moving_variance), never with the batch's own: when those are "
            "stale, fit() and evaluate() are wrong alike and show no gap, and re-estimating only "
            "the moving statistics makes the two modes disagree.",
            "Give renorm_clipping bounds (e.g. {'rmax': 3, 'rmin': 1/3, 'dmax': 5}) or use plain "
            "BatchNormalization; to repair statistics, re-estimate all of them together (bngap fix "
            "MODEL DATA -o fixed.keras does).",
            tuple(b.path for b in hits),
            {"renorm_vs_moving": apart},
        )
    ]
