"""A check run and its report delivered: stdout or files, headline, GitHub Actions."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..console import ProgressDisplay, err, terminal_width, use_color

if TYPE_CHECKING:  # the pipeline is imported only when a check runs
    from ..pipeline import CheckOptions
    from ..results import Baseline, Report

Plan = list[tuple[Path, str]]  # (file, format) of each --output, from writing.plan_outputs
Across = tuple[list[str], list[str]]  # (backends, notes) of --backends


def run_and_report(
    model: Any,
    data: Any,
    opts: CheckOptions,
    *,
    fmt: str,
    plan: Plan,
    all_layers: bool,
    progress: ProgressDisplay,
    baseline: Baseline | None = None,
    github: bool = False,
    across: Across | None = None,
) -> Report:
    """Runs a check (on each backend of `across`: (backends, notes)) and
    writes its report (stdout, or each planned file); returns the Report.
    Every output is rendered from the report's JSON form, so `bngap render
    r.json` reproduces any of them."""
    report = _run(model, data, opts, progress=progress, across=across)
    report = _as_saved(report, baseline=baseline, all_layers=all_layers)
    deliver(report, fmt, plan, all_layers=all_layers, quiet=not progress.enabled)
    if progress.enabled and (fmt != "text" or plan):
        from ..render.common import headline

        err(f"bngap: {headline(report)}")
    if github and os.environ.get("GITHUB_ACTIONS") == "true":
        _github_actions(report, stdout_free=bool(plan), all_layers=all_layers)
    return report


def _run(
    model: Any,
    data: Any,
    opts: CheckOptions,
    *,
    progress: ProgressDisplay,
    across: Across | None,
) -> Report:
    """The check's Report, on one backend or on each of `across`; the
    progress display is closed however it ends."""
    try:
        if across is not None:
            from ..crossbackend import check_across

            return check_across(
                model,
                data,
                opts,
                across[0],
                notes=across[1],
                progress=progress,
                status=progress.status,
            )
        from ..pipeline import check

        return check(model, data, options=opts, progress=progress, status=progress.status)
    finally:
        progress.close()


def _as_saved(report: Report, *, baseline: Baseline | None, all_layers: bool) -> Report:
    """The report with its baseline, as `bngap render` would read it back
    from its JSON form."""
    from ..results import Report

    # --all-layers is kept in the report, so that `bngap render` repeats it
    settings = {**report.settings, "all_layers": all_layers}
    return Report.from_dict(
        dataclasses.replace(report, baseline=baseline, settings=settings).to_dict()
    )


def deliver(report: Report, fmt: str, plan: Plan, *, all_layers: bool, quiet: bool) -> None:
    """The report to stdout in `fmt`, or to each (path, format) of `plan`."""
    from ..render import file_renderers, render

    if not plan:
        click.echo(
            render(
                report,
                fmt,
                all_layers=all_layers,
                width=terminal_width(),
                color=fmt == "text" and use_color(sys.stdout),
            ),
            nl=False,
        )
        return
    from ..writing import write_outputs

    for path in write_outputs(report, plan, file_renderers(all_layers=all_layers)):
        if not quiet:
            err(f"bngap: report written to {path}")


def _github_actions(report: Report, *, stdout_free: bool, all_layers: bool) -> None:
    """Under GitHub Actions: the Markdown report appended to the job summary,
    and an annotation per failing or warning gate and finding (on stdout
    when the report went to files, else on stderr; the runner reads both)."""
    from ..render import render
    from ..render.github import annotations as github_annotations

    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(render(report, "markdown", all_layers=all_layers) + "\n")
        except OSError as e:
            err(
                f"bngap: warning: cannot append to GITHUB_STEP_SUMMARY {summary}: {e.strerror or e}"
            )
    for line in github_annotations(report):
        click.echo(line, err=not stdout_free)
