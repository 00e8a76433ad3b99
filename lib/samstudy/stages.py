"""The study's stages and where a run keeps its files.

One notebook per stage, run in this order::

    data -> train_custom -> foundation -> finetune -> evaluate_custom -> compare -> gallery -> explore -> effort
         -> learning_curve

- :data:`STAGES` -- every stage with its notebook, the stages whose outputs it reads and its title.
- :func:`active_stages` -- the stages a config runs (the custom-model ones drop out when the custom
  model is disabled, the optional ones -- fine-tuning, learning curve -- unless enabled);
  :func:`config_stages` -- the same, read from a config's ``enabled`` flags.
- :class:`RunLayout` -- the paths of one run under ``results/<run>/``.

This module imports nothing of the package, so the config, the runner and the report can all
depend on it without importing one another.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Stage", "STAGES", "STAGE_NAMES", "RunLayout", "active_stages", "config_stages"]


@dataclass(frozen=True)
class Stage:
    """One notebook of the study.

    name: the stage's name (``results/<run>/<name>/`` holds its outputs).
    notebook: the notebook's file name in ``notebooks/``.
    deps: names of the stages whose outputs it reads (they run before it).
    title: a human-readable title (report pages).
    needs_custom: the stage exists only when the custom model is enabled.
    needs_finetune: the stage exists only when the fine-tuned arm is enabled.
    needs_learning_curve: the stage exists only when the learning curve is enabled.
    reads: stages whose outputs it uses when they are there, without waiting for them (not in its
        input hash: a change there does not rerun it; ``--force`` does).
    """

    name: str
    notebook: str
    deps: tuple[str, ...]
    title: str
    needs_custom: bool = False
    needs_finetune: bool = False
    needs_learning_curve: bool = False
    reads: tuple[str, ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("data", "00_data.ipynb", (), "Data, labeling policy and split"),
    Stage("train_custom", "01_train_custom.ipynb", ("data",), "Training the custom model", True),
    Stage("foundation", "02_foundation_prompts.ipynb", ("data",), "Foundation model over all prompt modes"),
    Stage("finetune", "07_finetune.ipynb", ("data", "foundation"), "Fine-tuned foundation models",
          needs_finetune=True),
    Stage("evaluate_custom", "03_evaluate_custom.ipynb", ("data", "train_custom"),
          "Custom model on the test split", True),
    Stage("compare", "04_compare.ipynb", ("data", "foundation", "evaluate_custom", "finetune"), "Comparison"),
    Stage("gallery", "05_failure_gallery.ipynb", ("data", "foundation", "evaluate_custom"), "Failure gallery"),
    Stage("explore", "06_explore.ipynb", ("data", "foundation", "evaluate_custom"), "Explorer"),
    Stage("effort", "08_effort.ipynb", ("data", "foundation", "evaluate_custom"), "Annotator effort (modelled)"),
    # The foundation results (zero-shot reference lines) are read when present, not waited for: the
    # curve is hours of training that a change of the foundation stage should not invalidate.
    Stage("learning_curve", "09_learning_curve.ipynb", ("data",), "Learning curve of the custom model",
          needs_custom=True, needs_learning_curve=True, reads=("foundation",)),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def active_stages(custom_enabled: bool, stages: Sequence[Stage] = STAGES,
                  finetune_enabled: bool = False, learning_curve_enabled: bool = False) -> list[Stage]:
    """The stages a run executes, in run order.

    With ``custom_enabled`` false the stages with ``needs_custom`` are dropped (``finetune_enabled``
    false: those with ``needs_finetune``; ``learning_curve_enabled`` false: those with
    ``needs_learning_curve``), and so are their names from the other stages' ``deps`` (a dropped
    stage is never waited for). Stages are otherwise returned unchanged and in the order of ``stages``.
    """
    keep = [s for s in stages if (custom_enabled or not s.needs_custom)
            and (finetune_enabled or not s.needs_finetune)
            and (learning_curve_enabled or not s.needs_learning_curve)]
    names = {s.name for s in keep}
    return [replace(s, deps=tuple(d for d in s.deps if d in names)) for s in keep]


def config_stages(cfg: Any, stages: Sequence[Stage] = STAGES) -> list[Stage]:
    """:func:`active_stages` of a study config (``samstudy.config.StudyConfig``, read by attribute so
    this module imports no config): its ``custom``, ``finetune`` and ``learning_curve`` flags."""
    return active_stages(cfg.custom.enabled, stages, finetune_enabled=cfg.finetune.enabled,
                         learning_curve_enabled=cfg.learning_curve.enabled)


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run; ``root`` is ``results_root/<run>``.

    ``<root>/<stage>/`` outputs of a stage, ``<root>/stages/<stage>.json`` its manifest,
    ``<root>/notebooks/<notebook>`` the executed notebook, ``<root>/report/`` the HTML pages,
    ``<root>/manifest.json`` the run manifest. Paths are built as given: a relative ``root`` gives
    relative paths.
    """

    root: Path

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def stage_manifest(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def notebook(self, stage: Stage) -> Path:
        return self.root / "notebooks" / stage.notebook

    def html(self, stage: Stage) -> Path:
        return self.report_dir / (Path(stage.notebook).stem + ".html")

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def index(self) -> Path:
        return self.report_dir / "index.html"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"
