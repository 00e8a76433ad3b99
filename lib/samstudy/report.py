"""What a run leaves for people: recorded values, tables, figures, HTML pages and the index.

- :func:`record` stores a named value of a notebook in ``<out_dir>/records.json`` (the tests and
  the index read it; it plays the role scrapbook plays elsewhere).
- :func:`save_table` / :func:`save_figure` write a stage's tables (Parquet + CSV) and figures (PNG).
- :func:`export_html` turns an executed notebook into a self-contained page: code hidden, images
  embedded, no script fetched from the internet (no requirejs, MathJax, mermaid or widget manager;
  an interactive widget shows a note pointing to the notebook, next to the static fallback the
  notebook displays itself).
- :func:`write_index` writes ``report/index.html``: headline table, protocol, pages, run summary.
- :data:`PUBLISHED` holds the published reference numbers of ``docs/STUDY.md`` with their
  protocols, and :func:`beside_published` places our numbers next to them.
"""
from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # heavy imports stay out of the CLI's start-up path
    import pandas as pd
    from matplotlib.figure import Figure

    from .pipeline import RunLayout, Stage

RECORDS_FILE = "records.json"
HEADLINE_FILE = "headline.csv"         # written by 04_compare, shown on the index
PUBLISHED_FILE = "beside_published.csv"  # written by 04_compare, shown on the index


# ----------------------------------------------------------------------------------------- records
def _jsonable(v: Any) -> Any:
    """numpy / pandas / Path values -> plain JSON values (NaN -> None)."""
    import numpy as np

    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "to_dict") and hasattr(v, "columns"):  # DataFrame -> list of row dicts
        return _jsonable(v.to_dict(orient="records"))
    if hasattr(v, "to_dict") and hasattr(v, "index"):  # Series -> dict
        return _jsonable(v.to_dict())
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def read_records(out_dir: str | os.PathLike) -> dict[str, Any]:
    """All values recorded in a stage folder (empty when none)."""
    p = Path(out_dir) / RECORDS_FILE
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def record(out_dir: str | os.PathLike, name: str, value: Any) -> Any:
    """Store ``value`` under ``name`` in ``<out_dir>/records.json`` (atomically); return ``value``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = read_records(out)
    data[name] = _jsonable(value)
    tmp = out / (RECORDS_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out / RECORDS_FILE)
    return value


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
{%- block footer -%}
{{ super() }}
{%- endblock footer -%}
"""


def export_html(notebook: str | os.PathLike, html_path: str | os.PathLike, title: str | None = None) -> Path:
    """Export an executed notebook to a self-contained HTML page with the code hidden."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    nb.metadata.pop("widgets", None)  # widget state would pull a widget manager from a CDN
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


# ------------------------------------------------------------------------------ published numbers
@dataclass(frozen=True)
class Published:
    """One published number. ``key`` names the quantity we measure that it is compared with."""

    reference: str   # coco | automotive | isegm
    key: str         # e.g. "custom", "tight_box", "loose_box[b=0.2]", "tight_box/small", "noc90/grabcut"
    quantity: str    # human description
    value: float
    method: str
    source: str
    protocol: str


_BENCH = "annotation-company benchmark (STUDY.md)"
_COCO_PROTO = "COCO, disjoint train/test split; mean IoU over test instances"
_AUTO_PROTO = "automotive customer set (policy: holes filled, same-category overlaps merged); mean IoU over test instances"
PUBLISHED: tuple[Published, ...] = (
    Published("coco", "custom", "mIoU, custom model (extreme points + refinement)", 0.863,
              "custom 2-stage model, ~9M params/stage", _BENCH, _COCO_PROTO),
    Published("coco", "tight_box", "mIoU, tight box", 0.760, "SAM", _BENCH, _COCO_PROTO),
    Published("coco", "loose_box[b=0.2]", "mIoU, loose box (20% buffer)", 0.657, "SAM", _BENCH, _COCO_PROTO),
    Published("coco", "tight_box", "mIoU, ground-truth box, COCO val2017", 0.774, "SAM ViT-H",
              "EfficientViT-SAM README", "COCO val2017, GT box prompts; per-instance/crowd handling not stated"),
    Published("coco", "tight_box", "mIoU, ground-truth box, all sizes", 0.728, "MobileSAM", "NanoSAM README",
              "COCO val2017, GT box prompts"),
    Published("coco", "tight_box/small", "mIoU, ground-truth box, small objects", 0.658, "MobileSAM",
              "NanoSAM README", "COCO val2017, GT box prompts, COCO size buckets"),
    Published("coco", "tight_box/medium", "mIoU, ground-truth box, medium objects", 0.759, "MobileSAM",
              "NanoSAM README", "COCO val2017, GT box prompts, COCO size buckets"),
    Published("coco", "tight_box/large", "mIoU, ground-truth box, large objects", 0.804, "MobileSAM",
              "NanoSAM README", "COCO val2017, GT box prompts, COCO size buckets"),
    Published("coco", "jitter_box[noise=0.2]", "mIoU, noisy box (noise 0.2)", 0.657, "SAM-L",
              "HQ-SAM supplement", "high-quality sets (not COCO); clean-box mIoU 0.795, noise 0.4: 0.464"),
    Published("coco", "extreme_points", "mIoU, extreme points (DEXTR)", 0.878, "DEXTR trained on COCO",
              "Maninis et al. 2018", "PASCAL VOC val, per instance"),
    Published("automotive", "custom", "mIoU, custom model (extreme points + refinement)", 0.888,
              "custom 2-stage model", _BENCH, _AUTO_PROTO),
    Published("automotive", "tight_box", "mIoU, tight box", 0.719, "SAM", _BENCH, _AUTO_PROTO),
    Published("automotive", "loose_box[b=0.2]", "mIoU, loose box (20% buffer)", 0.637, "SAM", _BENCH, _AUTO_PROTO),
    Published("isegm", "noc90/grabcut", "NoC@90, GrabCut", 1.54, "RITM HRNet18 (COCO+LVIS)", "Sofiiuk et al. 2022",
              "RITM click protocol, at most 20 clicks"),
    Published("isegm", "noc90/berkeley", "NoC@90, Berkeley", 2.26, "RITM HRNet18 (COCO+LVIS)",
              "Sofiiuk et al. 2022", "RITM click protocol, at most 20 clicks"),
    Published("isegm", "noc90/grabcut", "NoC@90, GrabCut", 1.88, "SAM ViT-H", "FocSAM (CVPR 2024)",
              "RITM click protocol, at most 20 clicks"),
    Published("isegm", "noc90/berkeley", "NoC@90, Berkeley", 2.09, "SAM ViT-H", "FocSAM (CVPR 2024)",
              "RITM click protocol, at most 20 clicks"),
)


def beside_published(ours: Mapping[str, float], reference: str, our_protocol: str,
                     our_method: Mapping[str, str] | None = None) -> "pd.DataFrame":
    """Our measured values next to every published number of ``reference``.

    ours: ``{key: value}`` with the keys of :data:`PUBLISHED` (missing keys show as NaN).
    our_method: ``{key: what produced our number}`` (e.g. the model label), shown beside the value.
    Returns columns ``quantity, published, method, source, published protocol, ours, our method,
    our protocol``.
    """
    import pandas as pd

    rows = []
    for p in PUBLISHED:
        if p.reference != reference:
            continue
        v = ours.get(p.key)
        rows.append({"quantity": p.quantity, "published": p.value, "method": p.method, "source": p.source,
                     "published protocol": p.protocol,
                     "ours": float(v) if v is not None else float("nan"),
                     "our method": (our_method or {}).get(p.key, ""), "our protocol": our_protocol})
    return pd.DataFrame(rows)


def protocol_statement(model_labels: Mapping[str, str], dataset: str, multimask: bool, crowd_excluded: bool = True,
                       policy: str = "none", gt_variants: Sequence[str] = ("policy",),
                       checkpoints: Mapping[str, str] | None = None) -> str:
    """One paragraph stating how our numbers were obtained (every report must carry it).

    model_labels: ``{registry name: report label}``; a label that is not a real SAM checkpoint
    (LiteMedSAM) is named as what it is. checkpoints: ``{registry name: sha256}``.
    """
    models = []
    for name, label in model_labels.items():
        sha = (checkpoints or {}).get(name)
        note = " (a medical-image SAM-architecture model used as a stand-in, not SAM)" if "medsam" in name.lower() else ""
        models.append(f"{label}{note}" + (f", checkpoint sha256 {sha[:12]}" if sha else ""))
    return (f"Protocol: mIoU is the mean over test objects of the per-object IoU (not per image) on {dataset}; "
            f"COCO crowd annotations {'excluded' if crowd_excluded else 'included'}; "
            f"{'best of 3 masks by predicted IoU' if multimask else 'single-mask output (multimask off)'}; "
            f"ground truth: labeling policy '{policy}', scored against {' and '.join(gt_variants)} ground truth; "
            f"tight box = bounding box of the ground-truth mask; loose box = tight box grown by b of its sides "
            f"(b = 0.2: 10% each side), clipped to the image; models: {'; '.join(models) or 'none'}.")


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
    from .pipeline import read_json

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
    cks = list(manifest.get("models") or []) + [c for c in manifest.get("checkpoints") or [] if c.get("sha256")]
    items = [("config", f"<code>{_esc(manifest.get('config_file'))}</code> (sha256 {_esc(str(manifest.get('config_sha256'))[:12])})"),
             ("git commit", f"<code>{_esc(git.get('commit'))}</code>{' (uncommitted changes)' if git.get('dirty') else ''}"),
             ("started / finished", f"{_esc(manifest.get('started'))} / {_esc(manifest.get('finished'))}"),
             ("this invocation", f"{manifest.get('seconds_this_invocation', 0):.1f} s"),
             ("packages", ", ".join(f"{_esc(k)} {_esc(v)}" for k, v in pk.items() if v)),
             ("checkpoints", "<br>".join(
                 f"{_esc(c.get('label') or c.get('model') or c.get('name'))}: "
                 f"<code>{_esc(str(c.get('checkpoint_sha256') or c.get('sha256'))[:16])}</code>" for c in cks) or "–")]
    return "<table id='run-summary'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items) + "</table>"


def write_index(layout: "RunLayout", stages: Sequence["Stage"], manifest: Mapping[str, Any]) -> Path:
    """Write ``report/index.html`` from the run's manifests and the comparison stage's tables."""
    from .pipeline import read_json

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
        parts += ["<h2>Beside the published numbers</h2>", _table_html(published, "published-table")]
    parts += ["<h2>Pages</h2>", _stage_rows(layout, stages),
              "<h2>Run</h2>", _summary_html(manifest),
              "<p class='muted'>Full details: <code>manifest.json</code> and <code>stages/*.json</code> in the run folder.</p>"]
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_esc(title)}</title>"
            f"<style>{_INDEX_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    layout.index.write_text(page, encoding="utf-8")
    return layout.index
