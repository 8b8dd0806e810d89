"""The text summary of `bngap fix`: before and after, side by side."""

from __future__ import annotations

import json

from .common import fix_rows, num


def render_fix_result(r, fmt: str) -> str:
    """The result of `bngap fix` in the named format ('text' or 'json')."""
    if fmt == "json":
        return json.dumps(r.to_dict(), indent=2, allow_nan=False) + "\n"
    if fmt == "text":
        return render_fix(r)
    raise ValueError(f"unknown format {fmt!r}; expected text or json")


def render_fix(r) -> str:
    lines = []
    verdict = ("written to " + r.written) if r.written else "not written"
    lines.append(
        f"bngap fix: output gap {num(r.before.relative_l2)} -> {num(r.after.relative_l2)} "
        f"(relative L2, train vs inference) · {verdict}"
    )
    lines.append(
        f"re-estimated {len(r.layers)} BatchNormalization layers on {r.samples} samples "
        f"in {r.passes} passes (batch size {r.batch_size})"
    )
    lines.append("")
    rows = fix_rows(r)
    w = max(len(a) for a, _, _ in rows)
    lines.append(f"{'':<{w}}  {'before':>10}  {'after':>10}")
    for a, b, c in rows:
        lines.append(f"{a:<{w}}  {b:>10}  {c:>10}")
    lines.append("")
    if r.layers:
        worst = sorted(r.layers, key=lambda f: f.gap_before, reverse=True)[:5]
        lines.append("largest corrections (expected local gap of the old statistics on this data):")
        for f in worst:
            extra = " (frozen)" if f.frozen else ""
            lines.append(
                f"  {f.path}{extra}: {num(f.gap_before, 3)}, new statistics' noise {num(f.noise, 3)}"
            )
    if r.skipped:
        lines.append(
            f"left alone: {len(r.skipped)} layers (e.g. {r.skipped[0][0]}: {r.skipped[0][1]})"
        )
    if r.reload_max_abs_diff is not None:
        lines.append(
            f"verified: the saved file reloads and matches the fixed model (max difference {r.reload_max_abs_diff:.2g})"
        )
    for n in r.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines) + "\n"
