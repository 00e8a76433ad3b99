"""What a run leaves for people: recorded values, tables, figures, HTML pages and the index.

- :func:`record` stores a named value of a notebook in ``<out_dir>/records.json`` (the tests and
  the index read it; it plays the role scrapbook plays elsewhere).
- :func:`save_table` / :func:`save_figure` write a stage's tables (Parquet + CSV) and figures (PNG).
- :func:`export_html` turns an executed notebook into a self-contained page: code hidden, images
  embedded, no script fetched from the internet (no requirejs, MathJax, mermaid or widget manager;
  an interactive widget shows a note pointing to the notebook, next to the static fallback the
  notebook displays itself; only the widgets' model ids are kept).
- :func:`write_index` writes ``report/index.html``: headline table, protocol, pages, run summary,
  read from the files the comparison stage leaves (:data:`HEADLINE_FILE`, :data:`PUBLISHED_FILE`,
  its ``protocol`` record).

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


# ------------------------------------------------------------------------------------- HTML pages
_TEMPLATE = r"""
{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style type="text/css">
 nav.samstudy { font: 14px sans-serif; padding: 8px 16px; background: #f3f4f6; border-bottom: 1px solid #ddd; }
 .samstudy-widget-note { font: 13px sans-serif; color: #555; padding: 6px 10px; border-left: 3px solid #bbb; }
</style>
{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
<nav class="samstudy"><a href="index.html">&larr; report index</a></nav>
{%- endblock body_header -%}
{%- block data_widget_view -%}
<div class="samstudy-widget-note">Interactive widget: open the executed notebook in Jupyter to use it;
the static fallback is shown below.</div>
{%- endblock data_widget_view -%}
{%- block data_png scoped -%}
{%- set alt = output | get_metadata('alt', 'image/png') -%}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}" alt="{{ (alt or 'figure') | escape_html }}">
</div>
{%- endblock data_png -%}
"""


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
    template turns it into a note) rather than the widget's text repr, and the page carries no payload."""
    state = nb.metadata.get("widgets", {}).get(_WIDGET_STATE, {}).get("state")
    if state is None:
        return
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(_WIDGET_VIEW)
            text = _progress_text(state, view.get("model_id", "")) if view else None
            if text is not None:
                out["data"] = {"text/plain": text}
    nb.metadata["widgets"][_WIDGET_STATE]["state"] = {k: {} for k in state}


def export_html(notebook: str | os.PathLike, html_path: str | os.PathLike, title: str | None = None) -> Path:
    """Export an executed notebook to a self-contained HTML page with the code hidden."""
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------ index
_INDEX_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 16px 24px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status-ok { color: #17703a; } .status-failed { color: #b00020; font-weight: bold; } .muted { color: #666; }
.banner { padding: 8px 12px; border-radius: 4px; margin: 12px 0; }
.banner.failed { background: #fde8ea; border: 1px solid #f3b5bd; } .banner.ok { background: #e8f6ee; border: 1px solid #b6e0c6; }
code { background: #f5f5f5; padding: 0 3px; }
"""


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _table_html(df: "pd.DataFrame", table_id: str) -> str:
    fmt = {c: (lambda x: f"{x:.3f}") for c in df.select_dtypes("float").columns}
    return df.to_html(index=False, table_id=table_id, formatters=fmt, na_rep="–", border=0, escape=True)


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


def _summary_html(manifest: Mapping[str, Any]) -> str:
    git = manifest.get("git") or {}
    pk = manifest.get("packages") or {}
    cks, seen = [], set()
    for c in list(manifest.get("models") or []) + [c for c in manifest.get("checkpoints") or [] if c.get("sha256")]:
        key = (c.get("label") or c.get("model") or c.get("name"), c.get("checkpoint_sha256") or c.get("sha256"))
        if key not in seen:
            seen.add(key)
            cks.append(c)
    items = [("config", f"<code>{_esc(manifest.get('config_file'))}</code> (sha256 {_esc(str(manifest.get('config_sha256'))[:12])})"),
             ("git commit", f"<code>{_esc(git.get('commit'))}</code>{' (uncommitted changes)' if git.get('dirty') else ''}"),
             ("started / finished", f"{_esc(manifest.get('started'))} / {_esc(manifest.get('finished'))}"),
             ("this invocation", f"{manifest.get('seconds_this_invocation', 0):.1f} s"),
             ("packages", ", ".join(f"{_esc(k)} {_esc(v)}" for k, v in pk.items() if v)),
             ("checkpoints", "<br>".join(
                 f"{_esc(c.get('label') or c.get('model') or c.get('name'))}: "
                 f"<code>{_esc(str(c.get('checkpoint_sha256') or c.get('sha256'))[:16])}</code>" for c in cks) or "–")]
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
            f"<style>{_INDEX_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    layout.index.write_text(page, encoding="utf-8")
    return layout.index
