"""The published reference numbers of ``docs/STUDY.md``, and the statement of our own protocol.

- :data:`PUBLISHED` holds every published number with its method, source and protocol. Its ``key``
  names the quantity of ours it is compared with: ``"custom"`` (the custom model's headline arm),
  a prompt-mode key in the canonical form of :class:`samstudy.prompts.PromptMode` (``"tight_box"``,
  ``"loose_box[b=0.2]"``, ``"jitter_box[noise=0.2]"``, ``"extreme_points"``), a mode key with a
  COCO size bucket (``"tight_box/small"``), or ``"noc90/<dataset>"``.
- :func:`beside_published` places our numbers (``{key: value}``) next to them.
- :func:`protocol_statement` / :func:`protocol_for_rows` state how our numbers were obtained; it
  lives here because it is the counterpart of ``Published.protocol``: every table that puts our
  numbers beside published ones carries it.
- :func:`noc90_reference` lists the published NoC@90 numbers for the click-curve figure.

This module imports neither :mod:`samstudy.report` nor :mod:`samstudy.pipeline`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Published", "PUBLISHED", "beside_published", "noc90_reference", "protocol_statement",
           "protocol_for_rows", "CUSTOM_KEY", "NOC90_PREFIX"]

CUSTOM_KEY = "custom"     # the key of the custom model's headline arm
NOC90_PREFIX = "noc90/"   # keys "noc90/<dataset>": mean NoC@90 on that dataset


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
    A ``reference`` without published numbers (e.g. ``"none"``) gives an empty table.
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


def noc90_reference(reference: str) -> "pd.DataFrame":
    """Published NoC@90 numbers of ``reference`` as ``label, noc90`` rows (the click figure's markers).

    ``label`` is ``"<method>, <dataset>"`` (e.g. ``"RITM HRNet18 (COCO+LVIS), GrabCut"``); only the
    ``isegm`` reference has NoC numbers, so any other reference gives an empty table.
    """
    import pandas as pd

    return pd.DataFrame([{"label": f"{p.method}, {p.quantity.split(', ')[-1]}", "noc90": p.value}
                         for p in PUBLISHED if p.reference == reference and p.key.startswith(NOC90_PREFIX)],
                        columns=["label", "noc90"])


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
            f"crowd annotations (COCO iscrowd = 1) {'excluded' if crowd_excluded else 'included'}; "
            f"{'best of 3 masks by predicted IoU' if multimask else 'single-mask output (multimask off)'}; "
            f"ground truth: labeling policy '{policy}', scored against {' and '.join(gt_variants)} ground truth; "
            f"tight box = bounding box of the ground-truth mask; loose box = tight box grown by b of its sides "
            f"(b = 0.2: 10% each side), clipped to the image; models: {'; '.join(models) or 'none'}.")


def protocol_for_rows(foundation: "pd.DataFrame", test_sets: Sequence[Mapping[str, str]], policy: str,
                      multimask: str, gt_variants: Sequence[str]) -> str:
    """:func:`protocol_statement` for the foundation models found in result rows.

    foundation: result rows with columns ``model, model_label, checkpoint_sha256`` (first row of
    each model is used; a null sha256 is left out). test_sets: the data stage's ``datasets.json`` ``"test"`` entries (their
    ``name`` is listed). multimask: the headline's multimask selection; only ``"best_of_3"``
    counts as multimask output (the protocol names the single-mask arm otherwise).
    """
    models = foundation.drop_duplicates("model") if len(foundation) else foundation
    labels = dict(zip(models["model"], models["model_label"])) if len(models) else {}
    # a model without a checkpoint file has a null sha256 (NaN/None in pandas): state no hash for it
    shas = ({m: sha for m, sha in zip(models["model"], models["checkpoint_sha256"]) if isinstance(sha, str) and sha}
            if len(models) else {})
    return protocol_statement(labels, dataset=", ".join(t["name"] for t in test_sets),
                              multimask=multimask == "best_of_3", policy=policy, gt_variants=gt_variants,
                              checkpoints=shas)
