"""What a run leaves for people: recorded values, tables, figures, HTML pages and the index.

- :func:`record` stores a named value of a notebook in ``<out_dir>/records.json`` (the tests and
  the index read it; it plays the role scrapbook plays elsewhere).
- :func:`save_table` / :func:`save_figure` write a stage's tables (Parquet + CSV) and figures (PNG).
- :func:`table_html` / :func:`show_table` / :func:`use_report_tables`: the one way tables are shown
  (fixed decimals, no index column, nothing truncated, missing values as "–").
- :func:`export_html` turns an executed notebook into a page: code hidden, images embedded, no
  script (no requirejs, MathJax, mermaid or widget manager; an interactive widget shows a note and
  the opening view saved in the notebook's widget state), styles from the one shared stylesheet
  ``report/report.css`` (:func:`write_stylesheet`) instead of 260 KB inlined into every page.
- :func:`write_index` writes ``report/index.html``: headline table (with the bootstrap CIs of
  :data:`HEADLINE_CI_FILE` when present), protocol, pages, run summary, read from the files the
  comparison stage leaves (:data:`HEADLINE_FILE`, :data:`PUBLISHED_FILE`, its ``protocol`` record).

The numbers themselves are made elsewhere: the comparison analysis in :mod:`samstudy.compare`, the
published reference numbers and our protocol statement in :mod:`samstudy.published`.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .files import atomic_path, jsonable, read_json

if TYPE_CHECKING:  # heavy imports stay out of the CLI's start-up path
    import pandas as pd
    from matplotlib.figure import Figure

    from .stages import RunLayout, Stage

RECORDS_FILE = "records.json"
HEADLINE_FILE = "headline.csv"         # written by 04_compare, shown on the index
PUBLISHED_FILE = "beside_published.csv"  # written by 04_compare, shown on the index
HEADLINE_CI_FILE = "miou_by_category.csv"  # 04_compare: compare.ci_table by category (with "all")


# ----------------------------------------------------------------------------------------- records
def read_records(out_dir: str | os.PathLike) -> dict[str, Any]:
    """All values recorded in a stage folder (empty when none)."""
    return read_json(Path(out_dir) / RECORDS_FILE) or {}


def record(out_dir: str | os.PathLike, name: str, value: Any) -> None:
    """Store ``value`` under ``name`` in ``<out_dir>/records.json`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = read_records(out)
    data[name] = jsonable(value)
    with atomic_path(out / RECORDS_FILE) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def save_table(df: "pd.DataFrame", out_dir: str | os.PathLike, name: str, csv: bool = True) -> Path:
    """Write ``<out_dir>/<name>.parquet`` (and ``.csv``); return the Parquet path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.parquet"
    df.to_parquet(path, index=False)
    if csv:
        df.to_csv(out / f"{name}.csv", index=False)
    return path


def save_figure(fig: "Figure", out_dir: str | os.PathLike, name: str, dpi: int = 110) -> Path:
    """Write ``<out_dir>/figures/<name>.png``; the figure stays open for display."""
    out = Path(out_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def figure_image(fig: "Figure", dpi: int = 100) -> Any:
    """An IPython PNG image of a figure, without saving it (for interactive widgets)."""
    import io

    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return Image(data=buf.getvalue(), format="png", alt=_figure_title(fig))


def show_figure(fig: "Figure", out_dir: str | os.PathLike, name: str, dpi: int = 110) -> Any:
    """Save the figure (:func:`save_figure`) and return the saved PNG as an IPython image to display.

    Showing the file itself means the report embeds exactly the PNG the run keeps, whatever
    matplotlib backend the kernel has (the figures of :mod:`samstudy.plots` have no pyplot manager).
    """
    from IPython.display import Image

    return Image(filename=str(save_figure(fig, out_dir, name, dpi)), alt=_figure_title(fig) or name)


def _figure_title(fig: "Figure") -> str:
    """The figure's title (suptitle, else its first axes' title) as the image's alternative text."""
    sup = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
    return sup or next((ax.get_title() for ax in fig.axes if ax.get_title()), "figure")


# ------------------------------------------------------------------------------------------ tables
NA_TEXT = "–"  # how a missing value (NaN, None) is shown in every table of the report
PERCENT_DECIMALS = 1  # columns named with "%": shares of objects, where 83.333 claims a false precision


def column_decimals(values: "pd.Series", decimals: int = 3) -> int:
    """Decimals for a float column: ``decimals``, or more when the column's largest magnitude is
    below 0.01, so that it keeps 3 significant digits in fixed notation (a learning rate of 0.003
    shows as ``0.00300``, never ``3.000e-03``)."""
    import numpy as np

    v = np.abs(values.to_numpy(dtype=float, na_value=np.nan))
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size or v.max() >= 0.01:
        return decimals
    return max(decimals, 2 - int(np.floor(np.log10(v.max()))))


def format_cell(value: Any, decimals: int = 3) -> str:
    """One table cell as text: floats in fixed notation with ``decimals`` (no ``-0.000``), integers
    as is, missing values as :data:`NA_TEXT`, anything else ``str``."""
    import numbers

    import pandas as pd

    if value is None or (not isinstance(value, (list, tuple, dict, set)) and pd.isna(value)):
        return NA_TEXT
    if isinstance(value, (bool, str)) or not isinstance(value, numbers.Number):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    text = f"{float(value):.{decimals}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def _flat_columns(df: "pd.DataFrame") -> "pd.DataFrame":
    """Index folded into columns and MultiIndex headers joined with ' · '. An unnamed integer index
    is row positions (a ``RangeIndex`` or what is left of one after filtering) and is dropped; a
    named or non-integer index (keys of a Series, groups) becomes columns, unnamed ones with an
    empty header."""
    import pandas as pd

    if df.index.nlevels == 1 and df.index.name is None and pd.api.types.is_integer_dtype(df.index):
        df = df.reset_index(drop=True)
    else:
        names = [n if n is not None else ("" if df.index.nlevels == 1 else f"level {i}")
                 for i, n in enumerate(df.index.names)]
        df = df.rename_axis(names).reset_index()
    if isinstance(df.columns, pd.MultiIndex):
        df.columns = [" · ".join(str(c) for c in col if str(c)) for col in df.columns]
    return df


def table_html(df: "pd.DataFrame | pd.Series", decimals: int | Mapping[str, int] = 3,
               table_id: str | None = None, scroll_rows: int = 25) -> str:
    """The report's one way to show a table: an HTML ``<table>`` with every row and the full text of
    every cell (nothing cut with '…'), no pandas index column (a meaningful index becomes columns),
    floats in fixed notation (:func:`column_decimals`, :data:`PERCENT_DECIMALS` for a column named
    with "%", or ``decimals[column]``), missing values as
    :data:`NA_TEXT`, numeric columns right-aligned (``class="num"``). Tables longer than
    ``scroll_rows`` rows scroll inside their box."""
    import pandas as pd

    frame = _flat_columns(df.to_frame() if isinstance(df, pd.Series) else df)
    cols = [str(c) for c in frame.columns]
    fmt = []
    for c, name in zip(frame.columns, cols):
        d = decimals.get(name, 3) if isinstance(decimals, Mapping) else decimals
        if "%" in name and not (isinstance(decimals, Mapping) and name in decimals):
            d = PERCENT_DECIMALS
        if pd.api.types.is_float_dtype(frame[c]):
            d = column_decimals(frame[c], d) if not (isinstance(decimals, Mapping) and name in decimals) else d
        numeric = pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        fmt.append((d, " class='num'" if numeric else ""))
    head = "".join(f"<th{cls}>{_esc(n)}</th>" for n, (_, cls) in zip(cols, fmt))
    body = "".join("<tr>" + "".join(f"<td{cls}>{_esc(format_cell(v, d))}</td>"
                                     for v, (d, cls) in zip(row, fmt)) + "</tr>"
                   for row in frame.itertuples(index=False, name=None))
    ident = f" id='{_esc(table_id)}'" if table_id else ""
    box = "samstudy-table scroll" if len(frame) > scroll_rows else "samstudy-table"
    return (f"<div class='{box}'><table{ident}><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def show_table(df: "pd.DataFrame | pd.Series", decimals: int | Mapping[str, int] = 3) -> Any:
    """:func:`table_html` as an IPython HTML object to ``display``."""
    from IPython.display import HTML

    return HTML(table_html(df, decimals))


def use_report_tables() -> None:
    """Make ``display(df)`` in this notebook kernel render DataFrames and Series with
    :func:`table_html` (called once in each notebook's set-up cell; no effect outside IPython)."""
    import pandas as pd
    from IPython import get_ipython

    ip = get_ipython()
    if ip is None:
        return
    html_formatter = ip.display_formatter.formatters["text/html"]
    for cls in (pd.DataFrame, pd.Series):
        html_formatter.for_type(cls, table_html)


# ------------------------------------------------------------------------------------- HTML pages
STYLESHEET = "report.css"  # one stylesheet next to the pages, linked by every page and the index

# Our own rules, after JupyterLab's: navigation bar, widget note, tables and the index page.
_SAMSTUDY_CSS = """
/* samstudy report */
* { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
a.anchor-link, .jp-Collapser { display: none; }
.jp-OutputArea-output pre { line-height: inherit; font-family: inherit; }
nav.samstudy { font: 14px sans-serif; padding: 8px 16px; background: #f3f4f6; border-bottom: 1px solid #ddd; }
.samstudy-widget-note { font: 13px sans-serif; color: #555; padding: 6px 10px; border-left: 3px solid #bbb; }
.samstudy-table { max-width: 100%; overflow-x: auto; margin: 6px 0; }
.samstudy-table.scroll { max-height: 32em; overflow-y: auto; }
/* the class is doubled to outrank JupyterLab's ":not(.jp-RenderedMarkdown).jp-RenderedHTMLCommon td" */
.samstudy-table.samstudy-table table { border-collapse: collapse; font-size: 13px; table-layout: auto; margin: 0; }
.samstudy-table.samstudy-table th, .samstudy-table.samstudy-table td { border: 1px solid #d6d6d6; padding: 3px 7px;
  text-align: left; vertical-align: top; max-width: 22em; overflow-wrap: break-word; }
.samstudy-table.samstudy-table th { background: #f3f4f6; position: sticky; top: 0; font-weight: bold; }
.samstudy-table.samstudy-table td.num, .samstudy-table.samstudy-table th.num { text-align: right; }
.samstudy-table.samstudy-table td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
body.samstudy-index { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px;
  padding: 16px 24px; color: #222; }
body.samstudy-index h1 { font-size: 1.6em; margin-bottom: 0.2em; }
body.samstudy-index h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
body.samstudy-index table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
body.samstudy-index th, body.samstudy-index td { border: 1px solid #ccc; padding: 4px 8px; text-align: left;
  vertical-align: top; }
body.samstudy-index th { background: #f3f4f6; }
body.samstudy-index td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status-ok { color: #17703a; } .status-failed { color: #b00020; font-weight: bold; } .muted { color: #666; }
.banner { padding: 8px 12px; border-radius: 4px; margin: 12px 0; }
.banner.failed { background: #fde8ea; border: 1px solid #f3b5bd; } .banner.ok { background: #e8f6ee; border: 1px solid #b6e0c6; }
body.samstudy-index code { background: #f5f5f5; padding: 0 3px; }
body.samstudy-index a, nav.samstudy a { color: #0645ad; text-decoration: underline; }
"""

# The lab template with its head replaced: no script (requirejs, MathJax, mermaid, widget manager)
# and no inlined CSS (JupyterLab's 256 KB and pygments'), only a link to the shared stylesheet.
_TEMPLATE = r"""
{%- extends 'index.html.j2' -%}
{%- block html_head -%}
<meta charset="utf-8" />
<meta name="viewport" content="width=device-width, initial-scale=1.0">
{% set nb_title = nb.metadata.get('title', resources['metadata']['name']) | escape_html_keep_quotes %}
<title>{{nb_title}}</title>
<link rel="stylesheet" href="report.css">
{%- endblock html_head -%}
{%- block body_header -%}
{{ super() }}
<nav class="samstudy"><a href="index.html">&larr; report index</a></nav>
{%- endblock body_header -%}
{%- block data_widget_view -%}
<div class="samstudy-widget-note">Interactive widget: run the notebook in Jupyter to use it;
a static copy of its opening view is shown below.</div>
{%- endblock data_widget_view -%}
{%- block data_png scoped -%}
{%- set alt = output | get_metadata('alt', 'image/png') -%}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}" alt="{{ (alt or 'figure') | escape_html }}">
</div>
{%- endblock data_png -%}
"""


def write_stylesheet(report_dir: str | os.PathLike) -> Path:
    """Write ``<report_dir>/report.css`` (:data:`STYLESHEET`): JupyterLab's stylesheet and light
    theme as nbconvert's lab template ships them, then the report's own rules."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    env = exporter.environment
    parts = [env.loader.get_source(env, f"static/{name}")[0] for name in ("index.css", "theme-light.css")]
    out = Path(report_dir) / STYLESHEET
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(parts + [_SAMSTUDY_CSS])
    if not out.is_file() or out.read_text(encoding="utf-8") != text:
        with atomic_path(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o644 & ~umask)  # a page's stylesheet is as readable as the page
    return out


_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _progress_text(state: Mapping[str, Any], model_id: str) -> str | None:
    """The final text of a tqdm notebook bar (an HBox of HTML, a progress bar, HTML), else ``None``."""
    import re

    box = state.get(model_id, {})
    if box.get("model_name") != "HBoxModel":
        return None
    kids = [state.get(str(c).removeprefix("IPY_MODEL_"), {}) for c in box.get("state", {}).get("children", [])]
    bars = [k for k in kids if k.get("model_name") in ("FloatProgressModel", "IntProgressModel")]
    if not bars:
        return None
    texts = [html.unescape(re.sub(r"<[^>]+>", "", str(k.get("state", {}).get("value", ""))))
             for k in kids if k.get("model_name") == "HTMLModel"]
    bar = bars[0].get("state", {})
    frac = float(bar.get("value", 0)) / float(bar.get("max") or 1)
    return f"{texts[0] if texts else ''} [{'#' * round(20 * frac):<20s}] {' '.join(texts[1:])}".strip()


def _static_widgets(nb: Any) -> None:
    """Make widget outputs static. Progress bars (tqdm in a kernel) become their final text; other
    widgets keep a view whose model id alone stays in the state, so nbconvert renders the view (our
    template turns it into a note; the notebook shows a static image of the widget's opening view
    itself, :func:`widget_with_text`) rather than the widget's text repr, and the page carries no
    widget payload."""
    state = nb.metadata.get("widgets", {}).get(_WIDGET_STATE, {}).get("state")
    if state is None:
        return
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(_WIDGET_VIEW)
            if not view:
                continue
            text = _progress_text(state, view.get("model_id", ""))
            if text is not None:
                out["data"] = {"text/plain": text}
    nb.metadata["widgets"][_WIDGET_STATE]["state"] = {k: {} for k in state}


class _WidgetWithText:
    def __init__(self, widget: Any, text: str):
        self.widget, self.text = widget, text

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = dict(self.widget._repr_mimebundle_(**kwargs))
        bundle["text/plain"] = self.text
        return bundle


def widget_with_text(widget: Any, text: str) -> Any:
    """An object that displays ``widget`` with ``text`` as its plain-text form instead of the
    widget's repr. A frontend that cannot show the widget (JupyterLab opening a saved notebook:
    it does not load saved widget state by default; any viewer without the widget manager) shows
    ``text``, e.g. a pointer to the static copy below, rather than ``VBox(children=(HBox(...``."""
    return _WidgetWithText(widget, text)


def export_html(notebook: str | os.PathLike, html_path: str | os.PathLike, title: str | None = None) -> Path:
    """Export an executed notebook to an HTML page with the code hidden: images embedded, no script,
    styles from the report's one stylesheet (:func:`write_stylesheet`, written next to the page)."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    _static_widgets(nb)
    if title:
        nb.metadata["title"] = title
    exporter = HTMLExporter(template_name="lab", template_file="samstudy_report.html.j2",
                            extra_loaders=[jinja2.DictLoader({"samstudy_report.html.j2": _TEMPLATE})],
                            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
                            embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": Path(notebook).stem}})
    out = Path(html_path)
    write_stylesheet(out.parent)
    out.write_text(body, encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------ index
def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _table_html(df: "pd.DataFrame", table_id: str) -> str:
    return table_html(df, table_id=table_id, scroll_rows=10**9)


def ci_text(mean: float, lo: float, hi: float, note: Any = None, decimals: int = 3) -> str:
    """``"0.931 [0.878, 0.972]"``; without an interval (``lo``/``hi`` missing) the mean and, when
    given, why there is none: ``"0.818 (no CI: all objects in 1 image)"``."""
    import pandas as pd

    m = format_cell(mean, decimals)
    if pd.isna(lo) or pd.isna(hi):
        return m if m == NA_TEXT or note is None or pd.isna(note) or not str(note) else f"{m} (no CI: {note})"
    return f"{m} [{format_cell(lo, decimals)}, {format_cell(hi, decimals)}]"


def headline_with_ci(ci: "pd.DataFrame", by: str = "category") -> "pd.DataFrame":
    """The headline as people read it: one row per ``by`` value (``all`` first), ``n`` objects, and
    per arm ``mean [lo, hi]`` (:func:`ci_text`); ``ci``: long ``compare.ci_table`` output
    (``by, arm, n, mean, lo, hi`` and optionally ``ci_note``)."""
    import pandas as pd

    note = ci["ci_note"] if "ci_note" in ci.columns else pd.Series([None] * len(ci), index=ci.index)
    cells = ci.assign(cell=[ci_text(m, l, h, n) for m, l, h, n in zip(ci["mean"], ci["lo"], ci["hi"], note)])
    wide = cells.pivot(index=by, columns="arm", values="cell")
    arms = list(dict.fromkeys(ci["arm"]))
    order = list(dict.fromkeys(ci[by]))
    n = ci.drop_duplicates(by).set_index(by)["n"]
    out = wide.reindex(index=order, columns=arms)
    out.insert(0, "n", n.reindex(order).astype(int))
    out.columns.name = None
    return out.reset_index()


def _read_csv(path: Path) -> "pd.DataFrame | None":
    import pandas as pd

    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def _stage_rows(layout: "RunLayout", stages: Sequence["Stage"]) -> str:
    rows = []
    for s in stages:
        m = read_json(layout.stage_manifest(s.name)) or {}
        status = m.get("status", "not run")
        page = layout.html(s)
        link = f'<a href="{_esc(page.name)}">{_esc(s.notebook)}</a>' if page.is_file() else _esc(s.notebook)
        secs = m.get("seconds")
        err = m.get("error") or {}
        detail = (f"cell {err.get('cell_index')} <code>{_esc(err.get('cell_first_line'))}</code>: "
                  f"{_esc(err.get('message'))}") if err else ""
        rows.append(f"<tr><td>{link}</td><td>{_esc(s.title)}</td><td class='status-{_esc(status)}'>{_esc(status)}</td>"
                    f"<td class='num'>{'' if secs is None else f'{secs:.1f}'}</td><td>{detail}</td></tr>")
    return ("<table id='pages'><tr><th>page</th><th>what</th><th>status</th><th>seconds</th><th>error</th></tr>"
            + "".join(rows) + "</table>")


def _checkpoints(manifest: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{sha256: [labels]}`` of the run's checkpoints, each file once (the custom checkpoint is
    recorded by training and by each arm built from it), labels in first-seen order."""
    out: dict[str, list[str]] = {}
    for c in list(manifest.get("models") or []) + [c for c in manifest.get("checkpoints") or [] if c.get("sha256")]:
        sha = c.get("checkpoint_sha256") or c.get("sha256")
        label = str(c.get("label") or c.get("model") or c.get("name"))
        labels = out.setdefault(str(sha), [])
        if label not in labels:
            labels.append(label)
    return out


def _summary_html(manifest: Mapping[str, Any]) -> str:
    git = manifest.get("git") or {}
    pk = manifest.get("packages") or {}
    cks = _checkpoints(manifest)
    items = [("config", f"<code>{_esc(manifest.get('config_file'))}</code> (sha256 {_esc(str(manifest.get('config_sha256'))[:12])})"),
             ("git commit", f"<code>{_esc(git.get('commit'))}</code>{' (uncommitted changes)' if git.get('dirty') else ''}"),
             ("started / finished", f"{_esc(manifest.get('started'))} / {_esc(manifest.get('finished'))}"),
             ("this invocation", f"{manifest.get('seconds_this_invocation', 0):.1f} s"),
             ("packages", ", ".join(f"{_esc(k)} {_esc(v)}" for k, v in pk.items() if v)),
             ("checkpoints", "<br>".join(
                 f"{_esc(labels[0] + (' (also: ' + '; '.join(labels[1:]) + ')' if labels[1:] else ''))}: "
                 f"<code>{_esc(str(sha)[:16])}</code>" for sha, labels in cks.items()) or NA_TEXT)]
    return "<table id='run-summary'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items) + "</table>"


def _inputs_html(layout: "RunLayout") -> str:
    """Counts of the data stage's skips and notes (its ``skips_and_notes`` record) with a link to the table."""
    c = read_records(layout.stage_dir("data")).get("skips_and_notes")
    if not c:
        return "<p id='inputs' class='muted'>No skip table yet (the data stage has not run).</p>"
    table = layout.stage_dir("data") / str(c.get("table", ""))
    link = (f" <a href='{_esc(os.path.relpath(table, layout.report_dir))}'>skip and note table</a>"
            if table.is_file() else "")
    by = c.get("by_reason") or {}
    detail = "; ".join(f"{_esc(r)} {n}" for k in ("skip", "note") for r, n in (by.get(k) or {}).items())
    return (f"<p id='inputs'><b>{int(c.get('skips', 0))}</b> input elements skipped, <b>{int(c.get('notes', 0))}</b>"
            f" notes{f' ({detail})' if detail else ''}.{link}</p>")


def write_index(layout: "RunLayout", stages: Sequence["Stage"], manifest: Mapping[str, Any]) -> Path:
    """Write ``report/index.html`` from the run's manifests and the comparison stage's tables."""
    layout.report_dir.mkdir(parents=True, exist_ok=True)
    compare_dir = layout.stage_dir("compare")
    records = read_records(compare_dir)
    headline = _read_csv(compare_dir / HEADLINE_FILE)
    headline_ci = _read_csv(compare_dir / HEADLINE_CI_FILE)
    if headline_ci is not None and {"arm", "mean", "lo", "hi", "n"} <= set(headline_ci.columns) and len(headline_ci):
        by = headline_ci.columns[0]
        headline = headline_with_ci(headline_ci, by)
    published = _read_csv(compare_dir / PUBLISHED_FILE)
    failed = [s for s in stages if (read_json(layout.stage_manifest(s.name)) or {}).get("status") == "failed"]
    cfg = manifest.get("config") or {}
    title = f"samstudy report: {cfg.get('name') or manifest.get('run')}"
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p class='muted'>Is SAM all you need for ML-assisted annotation? Run <code>{_esc(manifest.get('run'))}</code>. "
             f"{_esc(cfg.get('description'))}</p>"]
    if failed:
        s = failed[0]
        err = (read_json(layout.stage_manifest(s.name)) or {}).get("error") or {}
        parts.append(f"<div class='banner failed' id='failure'>Stage <b>{_esc(s.name)}</b> failed at cell "
                     f"{_esc(err.get('cell_index'))} (<code>{_esc(err.get('cell_first_line'))}</code>): "
                     f"{_esc(err.get('message'))}. Fix it and rerun the same command: completed stages are skipped.</div>")
    parts.append("<h2>Headline</h2>")
    if headline is not None and len(headline):
        parts.append(f"<div id='headline'>{_table_html(headline, 'headline-table')}</div>")
        if headline_ci is not None:
            parts.append("<p class='muted'>mIoU [95% percentile-bootstrap CI, images resampled]; "
                         "a group whose objects all sit in one image has no CI.</p>")
    else:
        parts.append("<p id='headline' class='muted'>No headline table yet (the comparison stage has not completed).</p>")
    if records.get("protocol"):
        parts.append(f"<p id='protocol'>{_esc(records['protocol'])}</p>")
    if published is not None and len(published):
        parts += ["<h2>Beside the published numbers</h2>",
                  "<p class='muted'>Published protocols differ from ours (column 'published protocol'); "
                  "ours is stated above.</p>", _table_html(published, "published-table")]
    parts += ["<h2>Inputs</h2>", _inputs_html(layout)]
    parts += ["<h2>Pages</h2>", _stage_rows(layout, stages),
              "<h2>Run</h2>", _summary_html(manifest),
              "<p class='muted'>Full details: <code>manifest.json</code> and <code>stages/*.json</code> in the run folder.</p>"]
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_esc(title)}</title>"
            f"<link rel='stylesheet' href='{STYLESHEET}'></head><body class='samstudy-index'>"
            + "\n".join(parts) + "</body></html>\n")
    write_stylesheet(layout.report_dir)
    layout.index.write_text(page, encoding="utf-8")
    return layout.index
