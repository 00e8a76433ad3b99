"""The custom extreme-point model of the study: 4 extreme points -> mask (stage 1) -> refined mask (stage 2).

- :mod:`.crops` -- crop geometry: crop box rules (margin, minimum size, collapsed points, padding),
  resampling, DEXTR heatmaps, paste-back to the full image.
- :mod:`.model` -- :class:`CustomConfig`, the two networks, :func:`build_custom_model`,
  checkpoints (:func:`load_custom`, :class:`CheckpointError`) and :class:`CustomSegmenter`.
- :mod:`.train` -- :func:`train_custom` (resumable, deterministic, time-budgeted) and the CLI
  ``python -m samstudy.custom.train``.
- :mod:`.evaluate` -- :func:`evaluate_custom`: the engine's result rows for both stages.

Typical use::

    from samstudy.custom import CustomConfig, train_custom, load_custom, evaluate_custom
    best = train_custom(train_ds, CustomConfig(max_minutes=25), "results/custom/coco")
    seg = load_custom(best)
    out = seg.predict(image, points)          # {"stage1": bool (H, W), "stage2": bool (H, W), ...}
    df = evaluate_custom(test_ds, seg, "results/custom/coco/eval")
"""
from .model import (CheckpointError, CustomConfig, CustomSegmenter, build_custom_model, load_custom,
                    stage_stats)
from .train import train_custom
from .evaluate import evaluate_custom

__all__ = ["CustomConfig", "build_custom_model", "train_custom", "load_custom", "CustomSegmenter",
           "CheckpointError", "evaluate_custom", "stage_stats"]
