"""The report as files a user can send: ``report.html`` (one self-contained page: tables, figures,
drawings, the spec and the package versions, readable offline), ``report.md``, and every table as CSV
and JSON. Tables come from :mod:`nas_service.report`, figures from :mod:`nas_service.plots`.

Several experiments can be reported together: their rows are concatenated, so arms with the same stage
and configuration pool their replicates (kept apart by experiment, see ``report.replicate_keys``).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from .plots import ReportFigure, render_figures
from .report import ReportTables, render_report, report_sections, report_tables
from .result_values import package_versions
from .results import ResultsStore

__all__ = ["ReportData", "load_report_data", "spec_baselines", "spec_sweeps", "data_tables", "html_page", "html_to_text",
           "write_report"]


@dataclass
class ReportData:
    """What a report is made of: the rows of one or more experiments and what each kept about itself."""

    trials: pd.DataFrame
    epochs: pd.DataFrame
    records: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # experiment root -> record


def load_report_data(stores: Sequence[ResultsStore]) -> ReportData:
    """Reads the stores' trials, epochs and experiment records (in the order given)."""

    def rows(frames: list[pd.DataFrame]) -> pd.DataFrame:
        # empty frames would only widen the columns with all-null ones; all empty: the first, columns kept
        filled = [f for f in frames if not f.empty]
        return pd.concat(filled, ignore_index=True) if filled else frames[0]

    return ReportData(trials=rows([s.trials() for s in stores]), epochs=rows([s.epochs() for s in stores]),
                      records={s.root.rsplit("/", 1)[0]: s.experiment_record() for s in stores})  # fmt: skip


def spec_baselines(data: ReportData) -> dict[str, str]:
    """``stage -> baseline arm`` as the experiments' specs name them (``stages[].baseline``), for the
    stages that have finished trials to compare."""
    finished = set(data.trials.loc[data.trials["status"] == "finished", "stage"]) if not data.trials.empty else set()
    out: dict[str, str] = {}
    for record in data.records.values():
        for stage in ((record or {}).get("spec") or {}).get("stages", []):
            if stage.get("baseline") and stage.get("name") in finished:
                out.setdefault(stage["name"], stage["baseline"])
    return out


def spec_sweeps(data: ReportData) -> dict[str, dict[str, list[Any]]]:
    """``stage -> axis -> levels`` in the order the experiments' specs list them (main-effect references)."""
    out: dict[str, dict[str, list[Any]]] = {}
    for record in data.records.values():
        for stage in ((record or {}).get("spec") or {}).get("stages", []):
            if stage.get("sweep"):
                out.setdefault(stage["name"], dict(stage["sweep"]))
    return out


_PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""\
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f1f3f5; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f8f9fa; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.note { color: #555; font-size: 0.9em; }
.warning { background: #fff4e5; border-left: 4px solid #e8590c; padding: 0.5em 1em; }
</style></head>
<body>
<h1>{{ title }}</h1>
<p class="note">Written {{ written }} by nas-service {{ versions.nas_service }} from {{ roots|join(", ") }}.
An arm is a stage's configuration without the seed; a replicate is one independent run of it (its own seed,
or the seed of the search its architecture came from, averaging that architecture's retrains). Intervals are
95% Student-t; arms with fewer than
3 replicates are flagged n&lt;3 and get no spread or test.</p>
{% if warnings %}<div class="warning"><h2>Warnings</h2><ul>
{% for warning in warnings %}<li>{{ warning }}</li>{% endfor %}
</ul></div>{% endif %}
{% if not sections %}<p>No finished trials yet.</p>{% endif %}
{% for section in sections %}
{% if section.level == 1 %}<h2 id="{{ section.anchor }}">{{ section.heading }}</h2>{% else %}<h3>{{ section.heading }}</h3>{% endif %}
{{ section.table }}
{% endfor %}
{% for name, figures in figure_sections %}
<h2>{{ name }}</h2>
{% for figure in figures %}
<figure><img src="data:image/png;base64,{{ figure.data }}" alt="{{ figure.title }}">
<figcaption><b>{{ figure.title }}</b>. {{ figure.caption }}</figcaption></figure>
{% endfor %}
{% endfor %}
<h2>Experiments</h2>
{% for root, record in records %}
<h3>{{ root }}</h3>
{% if record %}<p class="note">Last run {{ record.get("started_at", "?") }}; code {{ record.get("code_version", "?") }}.</p>
<details><summary>spec</summary><pre>{{ record.get("spec")|tojson(indent=2) }}</pre></details>
{% else %}<p class="note">This store keeps no spec (written before nas-service kept one).</p>{% endif %}
{% endfor %}
<h2>Versions</h2>
<table><tr><th>package</th><th>this report</th><th>the trials</th></tr>
{% for name, mine, theirs in version_rows %}<tr><td>{{ name }}</td><td>{{ mine }}</td><td>{{ theirs }}</td></tr>{% endfor %}
</table>
</body></html>
""")


def _trial_versions(trials: pd.DataFrame, name: str) -> str:
    column = f"version.{name}"
    if trials.empty or column not in trials:
        return "-"
    return ", ".join(sorted({str(v) for v in trials[column].dropna()})) or "-"


def data_tables(data: ReportData, baselines: Mapping[str, str] | None) -> ReportTables:
    """The report's tables of ``data``, main-effect levels in its specs' order."""
    return report_tables(data.trials, baselines, spec_sweeps(data))


def html_page(data: ReportData, tables: ReportTables, figures: Sequence[ReportFigure],
              *, title: str | None = None) -> str:  # fmt: skip
    """The self-contained page: every figure inlined as a PNG data URI, so the file reads offline."""
    sections = [{"level": level, "heading": heading, "anchor": f"stage-{html.escape(stage)}",
                 "table": jinja2.utils.markupsafe.Markup(table.to_html(index=False, na_rep="", border=0))}
                for stage, level, heading, table in report_sections(tables)]  # fmt: skip
    grouped: dict[str, list[dict[str, str]]] = {}
    for figure in figures:
        grouped.setdefault(figure.section, []).append({
            "title": figure.title, "caption": figure.caption,
            "data": base64.b64encode(figure.path.read_bytes()).decode("ascii"),
        })  # fmt: skip
    mine = package_versions()
    roots = list(data.records) or ["(no store)"]
    return _PAGE.render(
        title=title or "Report: " + ", ".join(r.rsplit("/", 1)[-1] for r in roots),
        written=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), versions=mine, roots=roots,
        sections=sections, warnings=list(tables.warnings), figure_sections=list(grouped.items()),
        records=list(data.records.items()),
        version_rows=[(k, v or "-", _trial_versions(data.trials, k)) for k, v in mine.items()],
    )  # fmt: skip


def write_report(data: ReportData, output: str | Path, baselines: Mapping[str, str] | None = None) -> Path:
    """Writes ``report.html``, ``report.md``, the figures (``figures/*.png``), ``arms.csv/json``,
    ``comparisons.csv/json`` and ``main_effects.csv/json`` (where there are any) into the folder
    ``output``; returns the path of ``report.html``. Every file is written whole before it replaces the
    previous one, so an interrupted report never leaves half a page."""
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (folder / "figures").glob("*.png"):  # figures of arms a rerun no longer has
        stale.unlink()
    figures = render_figures(data.trials, data.epochs, folder / "figures")
    tables = data_tables(data, baselines)  # once, for the files, the Markdown and the page
    for name, table in (("arms", tables.arms), ("comparisons", tables.comparisons), ("main_effects", tables.main_effects)):
        if name == "arms" or not table.empty:
            _write(folder / f"{name}.csv", table.to_csv(index=False))
            _write(folder / f"{name}.json", json.dumps(table.to_dict("records"), indent=2))
    _write(folder / "report.md", f"# Report\n\n{render_report(tables, 'markdown')}\n")
    return _write(folder / "report.html", html_page(data, tables, figures))


def html_to_text(data: ReportData, baselines: Mapping[str, str] | None) -> str:
    """The page for ``--format html`` on standard output: figures drawn in a temporary folder, inlined."""
    with tempfile.TemporaryDirectory() as scratch:
        return html_page(data, data_tables(data, baselines), render_figures(data.trials, data.epochs, scratch))


def _write(path: Path, text: str) -> Path:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    temp.replace(path)
    return path
