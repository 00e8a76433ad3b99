"""What a run leaves for people: recorded values, tables, figures, HTML pages and the index.

- :func:`record` stores a named value of a notebook in ``<out_dir>/records.json`` (the tests and
  the index read it; it plays the role scrapbook plays elsewhere).
- :func:`save_table` / :func:`save_figure` write a stage's tables (Parquet + CSV) and figures (PNG).
- :func:`export_html` turns an executed notebook into a self-contained page: code hidden, images
  embedded, no script fetched from the internet (no requirejs, MathJax, mermaid or widget manager;
  an interactive widget shows a note pointing to the notebook, next to the static fallback the
  notebook displays itself; only the widgets' model ids are kept).
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
    import numpy as np
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


def record(out_dir: str | os.PathLike, name: str, value: Any) -> None:
    """Store ``value`` under ``name`` in ``<out_dir>/records.json`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = read_records(out)
    data[name] = _jsonable(value)
    tmp = out / (RECORDS_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out / RECORDS_FILE)


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
    Returns columns ``quantity, published, method, source, published protocol, ours, our method``;
    ``our_protocol`` (one statement for all our numbers) goes into ``df.attrs["our protocol"]``.
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
                     "our method": (our_method or {}).get(p.key, "")})
    df = pd.DataFrame(rows)
    df.attrs["our protocol"] = our_protocol
    return df


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
        parts += ["<h2>Beside the published numbers</h2>",
                  "<p class='muted'>Published protocols differ from ours (column 'published protocol'); "
                  "ours is stated above.</p>", _table_html(published, "published-table")]
    parts += ["<h2>Pages</h2>", _stage_rows(layout, stages),
              "<h2>Run</h2>", _summary_html(manifest),
              "<p class='muted'>Full details: <code>manifest.json</code> and <code>stages/*.json</code> in the run folder.</p>"]
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_esc(title)}</title>"
            f"<style>{_INDEX_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    layout.index.write_text(page, encoding="utf-8")
    return layout.index


# ------------------------------------------------------------------------------------------ tables
# Tables the comparison, gallery and explorer notebooks show. All take the result rows of
# docs/ARCHITECTURE.md (one per object x prompt mode x model [x click] x gt_variant).
OBJECT_KEYS = ["dataset", "image_id", "ann_id"]
OBJECT_INFO = ["category", "size_bucket", "area", "tags"]
PRIMARY = "primary"  # the engine's name for the dataset's own (policy) ground truth


@dataclass(frozen=True)
class Arm:
    """One compared regime: a model with one prompt mode (and multimask policy).

    kind: ``"custom"``, ``"tight"`` or ``"loose"`` (the headline's three regimes) or ``"other"``.
    label: how tables and figures name it, built from the model's own ``model_label`` (so LiteMedSAM
    is never called SAM).
    """

    label: str
    model: str
    prompt_mode: str
    multimask: str | None
    kind: str


def load_rows(*dirs: str | os.PathLike, name: str = "rows.parquet") -> "pd.DataFrame":
    """Concatenate ``<dir>/rows.parquet`` of the given stage folders (empty folders/strings skipped)."""
    import pandas as pd

    frames = [pd.read_parquet(Path(d) / name) for d in dirs if d and (Path(d) / name).is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _mode_label(mode: str) -> str:
    return (mode.replace("_", " ").replace("[b=", " (b=").replace("[noise=", " (noise=")
            .replace("[", " (").replace("]", ")"))


def headline_arms(foundation: "pd.DataFrame", custom: "pd.DataFrame | None", tight_mode: str | None,
                  loose_mode: str | None, multimask: str = "single") -> list[Arm]:
    """The headline's arms: the custom model (if any; refined stage first), then per foundation model
    its tight and loose box.

    Only arms with at least one one-shot result row are returned (``None`` modes are left out).
    """
    arms: list[Arm] = []
    if custom is not None and len(custom):
        # Custom rows may hold several stages (custom_stage1, custom_stage2): the last stage (the
        # full pipeline) comes first, so it is *the* custom arm wherever one is picked.
        one = custom[custom["click"] == 0]
        groups = sorted(one.groupby(["model", "prompt_mode", "model_label"]).groups, key=lambda k: k[0], reverse=True)
        for model, mode, label in groups:
            arms.append(Arm(f"{label}, {_mode_label(mode)}", model, mode, None, "custom"))
    if len(foundation):
        one = foundation[(foundation["click"] == 0) & (foundation["multimask"] == multimask)]
        present = set(zip(one["model"], one["prompt_mode"]))
        for (model, label), _ in foundation.groupby(["model", "model_label"], sort=False):
            for mode, kind in ((tight_mode, "tight"), (loose_mode, "loose")):
                if mode and (model, mode) in present:
                    arms.append(Arm(f"{label}, {_mode_label(mode)}", model, mode, multimask, kind))
    return arms


def _arm_rows(rows: "pd.DataFrame", arm: Arm, gt_variant: str) -> "pd.DataFrame":
    m = ((rows["model"] == arm.model) & (rows["prompt_mode"] == arm.prompt_mode) & (rows["click"] == 0)
         & (rows["gt_variant"] == gt_variant) & (rows["status"] == "ok"))
    if arm.multimask is not None:
        m &= rows["multimask"] == arm.multimask
    return rows[m]


def arm_matrix(rows: "pd.DataFrame", arms: Sequence[Arm], metric: str = "iou",
               gt_variant: str = PRIMARY) -> "pd.DataFrame":
    """One row per object scored by *every* arm (paired), one column per arm label with ``metric``.

    Columns: ``dataset, image_id, ann_id, category, size_bucket, area, tags`` then the arm labels.
    Objects skipped by some arm are left out, so every arm is averaged over the same objects.
    """
    import pandas as pd

    out = None
    for arm in arms:
        r = _arm_rows(rows, arm, gt_variant)
        cols = OBJECT_KEYS + (OBJECT_INFO if out is None else [])
        part = r[cols + [metric]].rename(columns={metric: arm.label}).drop_duplicates(OBJECT_KEYS)
        out = part if out is None else out.merge(part, on=OBJECT_KEYS, how="inner")
    if out is None:
        return pd.DataFrame(columns=OBJECT_KEYS + OBJECT_INFO)
    return out.sort_values(OBJECT_KEYS).reset_index(drop=True)


def mean_table(matrix: "pd.DataFrame", labels: Sequence[str], by: str | None = "category",
               all_label: str = "all") -> "pd.DataFrame":
    """Mean of each arm column overall (first row, ``all_label``) and per ``by`` value, with ``n`` objects."""
    import pandas as pd

    rows = [{by or "group": all_label, "n": len(matrix), **{l: matrix[l].mean() for l in labels}}]
    if by is not None:
        for key, g in matrix.groupby(by, sort=True):
            rows.append({by: key, "n": len(g), **{l: g[l].mean() for l in labels}})
    return pd.DataFrame(rows)


def ci_table(matrix: "pd.DataFrame", labels: Sequence[str], rng: "np.random.Generator", n_boot: int,
             by: str | None = None) -> "pd.DataFrame":
    """Long table ``[by], arm, n, mean, lo, hi``: 95% percentile-bootstrap CI of each arm's mean.

    Resampling is by image (cluster bootstrap, ``stats.bootstrap_mean_ci(groups=image_id)``):
    objects of one image are not independent.
    """
    import pandas as pd

    from .stats import bootstrap_mean_ci

    groups = [("all", matrix)] if by is None else [("all", matrix), *matrix.groupby(by, sort=True)]
    out = []
    for key, g in groups:
        for l in labels:
            if len(g) < 2:
                mean, lo, hi = (float(g[l].mean()) if len(g) else float("nan"),) + (float("nan"),) * 2
            else:
                mean, lo, hi = bootstrap_mean_ci(g[l].to_numpy(float), rng, n_boot=n_boot,
                                                 groups=_image_groups(g))
            out.append({**({by: key} if by else {}), "arm": l, "n": len(g), "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(out)


def _image_groups(df: "pd.DataFrame") -> "np.ndarray":
    return (df["dataset"].astype(str) + ":" + df["image_id"].astype(str)).to_numpy()


def paired_diff_table(matrix: "pd.DataFrame", pairs: Sequence[tuple[str, str]], rng: "np.random.Generator",
                      n_boot: int, by: str | None = "category") -> "pd.DataFrame":
    """``comparison, [by], n, diff, lo, hi``: paired bootstrap CI of ``mean(a - b)`` per pair (by image)."""
    import pandas as pd

    from .stats import bootstrap_paired_diff_ci

    groups = [("all", matrix)] if by is None else [("all", matrix), *matrix.groupby(by, sort=True)]
    out = []
    for a, b in pairs:
        for key, g in groups:
            if len(g) >= 2:
                d, lo, hi = bootstrap_paired_diff_ci(g[a].to_numpy(float), g[b].to_numpy(float), rng,
                                                     n_boot=n_boot, groups=_image_groups(g))
            else:
                d, lo, hi = (float((g[a] - g[b]).mean()) if len(g) else float("nan")), float("nan"), float("nan")
            out.append({"comparison": f"{a} − {b}", **({by: key} if by else {}), "n": len(g),
                        "diff": d, "lo": lo, "hi": hi})
    return pd.DataFrame(out)


def buffer_sweep_table(rows: "pd.DataFrame", rng: "np.random.Generator", n_boot: int, multimask: str = "single",
                       gt_variant: str = PRIMARY) -> "pd.DataFrame":
    """``model_label, buffer, n, mean, lo, hi``: mIoU of loose boxes against the buffer b (tight box = 0).

    Per model, only objects scored at every b are used, so the curve compares like with like.
    """
    import pandas as pd

    r = rows[(rows["click"] == 0) & (rows["status"] == "ok") & (rows["gt_variant"] == gt_variant)
             & (rows["multimask"] == multimask) & rows["buffer"].notna()
             & rows["prompt_mode"].str.match(r"^(tight_box|loose_box)")]
    out = []
    for label, g in r.groupby("model_label", sort=False):
        wide = g.pivot_table(index=OBJECT_KEYS, columns="buffer", values="iou", aggfunc="first").dropna()
        for b in sorted(wide.columns):
            v = wide[b]
            grp = (wide.index.get_level_values("dataset").astype(str) + ":" +
                   wide.index.get_level_values("image_id").astype(str)).to_numpy()
            mean, lo, hi = _boot(v.to_numpy(float), rng, n_boot, grp)
            out.append({"model_label": label, "buffer": float(b), "n": len(v), "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(out, columns=["model_label", "buffer", "n", "mean", "lo", "hi"])


def _boot(v: "np.ndarray", rng: "np.random.Generator", n_boot: int, groups: "np.ndarray") -> tuple[float, float, float]:
    from .stats import bootstrap_mean_ci

    if len(v) < 2:
        return (float(v.mean()) if len(v) else float("nan")), float("nan"), float("nan")
    return bootstrap_mean_ci(v, rng, n_boot=n_boot, groups=groups)


def click_rows(rows: "pd.DataFrame", gt_variant: str = PRIMARY) -> "pd.DataFrame":
    """The click-sequence rows (``click >= 1``, status ok) against one ground-truth variant."""
    return rows[(rows["click"] >= 1) & (rows["status"] == "ok") & (rows["gt_variant"] == gt_variant)]


def click_curve_table(rows: "pd.DataFrame", gt_variant: str = PRIMARY) -> "pd.DataFrame":
    """``dataset, model_label, prompt_mode, multimask, click, n, mean``: mIoU after each click."""
    r = click_rows(rows, gt_variant)
    keys = ["dataset", "model_label", "prompt_mode", "multimask", "click"]
    return (r.groupby(keys, sort=True)["iou"].agg(n="size", mean="mean").reset_index())


def noc_summary(rows: "pd.DataFrame", thresholds: Sequence[float] = (0.85, 0.9),
                gt_variant: str = PRIMARY) -> "pd.DataFrame":
    """Mean NoC@85/NoC@90 (RITM, capped at the sequence length) and the share of objects reaching them.

    One row per ``dataset, model_label, prompt_mode, multimask``; NoC per object from
    :func:`samstudy.metrics.noc_table` with ``max_clicks`` = the sequence's number of clicks.
    """
    import pandas as pd

    from .metrics import noc_table

    r = click_rows(rows, gt_variant)
    out = []
    for (ds, label, mode, mm), g in r.groupby(["dataset", "model_label", "prompt_mode", "multimask"], sort=True):
        max_clicks = int(g["click"].max())
        t = noc_table(g, thresholds=thresholds, max_clicks=max_clicks)
        row = {"dataset": ds, "model_label": label, "prompt_mode": mode, "multimask": mm,
               "objects": len(t), "max_clicks": max_clicks}
        for th in thresholds:
            tag = f"{round(th * 100):d}"
            row[f"NoC@{tag}"] = float(t[f"noc_{tag}"].mean())
            row[f"reached@{tag} (%)"] = 100.0 * float(t[f"reached_{tag}"].mean())
        out.append(row)
    return pd.DataFrame(out)


def policy_gap_table(rows: "pd.DataFrame", arms: Sequence[Arm], raw_variant: str = "raw") -> "pd.DataFrame":
    """How much of each arm's score the labeling policy costs: mIoU against raw and policy ground truth.

    Same objects for both variants (those scored against both); arms without raw rows are left out.
    Columns: ``arm, n, mIoU raw GT,
    mIoU policy GT, lost to the policy``; with a custom arm also ``gap to custom (policy GT)``,
    ``of which policy`` and ``of which mask quality`` (= gap - policy share).
    """
    import pandas as pd

    out = []
    custom = next((a for a in arms if a.kind == "custom"), None)
    cm = arm_matrix(rows, [custom], gt_variant=PRIMARY) if custom else None
    for arm in arms:
        p = _arm_rows(rows, arm, PRIMARY)[OBJECT_KEYS + ["iou"]].rename(columns={"iou": "policy"})
        r = _arm_rows(rows, arm, raw_variant)[OBJECT_KEYS + ["iou"]].rename(columns={"iou": "raw"})
        both = p.merge(r, on=OBJECT_KEYS)
        if not len(both):  # an arm scored against the policy only (the custom model, trained on it)
            continue
        row = {"arm": arm.label, "n": len(both), "mIoU raw GT": both["raw"].mean() if len(both) else float("nan"),
               "mIoU policy GT": both["policy"].mean() if len(both) else float("nan")}
        row["lost to the policy"] = row["mIoU raw GT"] - row["mIoU policy GT"]
        if cm is not None and arm.kind != "custom":
            j = both.merge(cm[OBJECT_KEYS + [custom.label]], on=OBJECT_KEYS)
            gap = float((j[custom.label] - j["policy"]).mean())
            share = float((j["raw"] - j["policy"]).mean())
            row.update({"gap to custom (policy GT)": gap, "of which policy": share,
                        "of which mask quality": gap - share})
        out.append(row)
    return pd.DataFrame(out)


def policy_changes(raw: Any, policy: Any) -> "pd.DataFrame":
    """Per category, what the labeling policy changed: objects before/after, merged, filled, pixels added.

    ``raw`` and ``policy``: ``data.Dataset`` of the same images before and after ``apply_policy``.
    A policy object is *merged* when it lists several ``source_ann_ids``, *filled* when it has more
    pixels than the union of its raw members.
    """
    import pandas as pd

    raw_by_id = {t.ann_id: t for t in raw.instances}
    rows = []
    for cid, name in sorted(raw.categories.items()):
        before = [t for t in raw.instances if t.category_id == cid]
        after = [t for t in policy.instances if t.category_id == cid]
        merged = [t for t in after if len(t.source_ann_ids or ()) > 1]
        members_area = [sum(raw_by_id[a].area for a in (t.source_ann_ids or (t.ann_id,)) if a in raw_by_id)
                        for t in after]
        added = [max(0, t.area - m) for t, m in zip(after, members_area)]
        rows.append({"category": name, "objects before": len(before), "objects after": len(after),
                     "merged objects": len(merged), "filled objects": sum(a > 0 for a in added),
                     "pixels added": int(sum(added)),
                     "pixels before": int(sum(t.area for t in before))})
    return pd.DataFrame(rows)


def dataset_stats(datasets: Mapping[str, Any]) -> "pd.DataFrame":
    """Per split and category: images, objects, size buckets, objects with holes (``tags`` 'holes' or not).

    ``datasets``: ``{split name: data.Dataset}``.
    """
    import pandas as pd

    from .metrics import size_bucket

    rows = []
    for split, ds in datasets.items():
        for t in ds.instances:
            rows.append({"split": split, "category": t.category, "image_id": t.image_id,
                         "size_bucket": size_bucket(t.area), "area": t.area})
    if not rows:
        return pd.DataFrame(columns=["split", "category", "images", "objects", "small", "medium", "large", "mean area"])
    df = pd.DataFrame(rows)
    g = df.groupby(["split", "category"], sort=True)
    out = g.agg(images=("image_id", "nunique"), objects=("area", "size"), **{"mean area": ("area", "mean")})
    buckets = pd.crosstab([df["split"], df["category"]], df["size_bucket"])
    out = out.join(buckets.reindex(columns=["small", "medium", "large"], fill_value=0)).reset_index()
    return out[["split", "category", "images", "objects", "small", "medium", "large", "mean area"]]
