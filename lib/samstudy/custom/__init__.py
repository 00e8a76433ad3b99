"""The custom extreme-point model of the study: 4 extreme points -> mask (stage 1) -> refined mask (stage 2).

- :mod:`.crops` -- crop geometry: crop box rules (margin, minimum size, collapsed points, padding),
  resampling, DEXTR heatmaps, paste-back to the full image.
- :mod:`.model` -- :class:`CustomConfig`, the two networks, :func:`build_custom_model`,
  checkpoints (:func:`load_custom`) and the inference wrapper :class:`CustomSegmenter`.
- :mod:`.train` -- :func:`train_custom` (resumable, deterministic, step-scheduled) and the CLI
  ``python -m samstudy.custom.train``.
- :mod:`.arm` -- :class:`CustomArm`: each stage as a promptable segmenter, scored by the engine
  (:func:`samstudy.engine.run_experiment`) like every other arm; it takes ``extreme_points`` and
  corrective clicks after them (``clicks[start=extreme_points,max_clicks=K]``).
- :mod:`.evaluate` -- paired tables: the refinement's gain over stage 1, each click's gain.
- :mod:`.learning` -- learning curves: seeded train-split subsets, power-law fit and projection.

Typical use::

    from samstudy.custom import CustomConfig, train_custom, load_custom, custom_arms
    from samstudy.engine import run_experiment
    best = train_custom(train_ds, CustomConfig(max_minutes=25), "results/custom/coco")
    seg = load_custom(best)
    out = seg.predict(image, points)          # {"stage1": bool (H, W), "stage2": bool (H, W), ...}
    for arm in custom_arms(seg):              # custom_stage1, custom_stage2
        df = run_experiment(test_ds, arm, ["extreme_points"], f"results/custom/coco/{arm.name}",
                            multimask=["single"])
"""
from .arm import STAGE_MODELS, CustomArm, custom_arms
from .model import CustomConfig, CustomSegmenter, build_custom_model, load_custom, stage_stats
from .train import train_custom

__all__ = ["CustomConfig", "build_custom_model", "train_custom", "load_custom", "CustomSegmenter",
           "CustomArm", "custom_arms", "STAGE_MODELS", "stage_stats"]
