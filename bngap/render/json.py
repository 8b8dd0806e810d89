"""The JSON report: `Report.to_dict()` serialised, keys stable (schema 1)."""

from __future__ import annotations

import json

from ..results import Report


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
