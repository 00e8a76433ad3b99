"""Command line: ``samstudy run | download | synth``.

    samstudy run --config configs/demo.yaml [--run NAME] [--only STAGE ...] [--force] [--dry-run]
                 [--results DIR] [--cache-dir DIR]
                 [--executor local|ray] [--ray-address ADDR]
    samstudy download coco --dest data/coco [--splits val2017 train2017]
    samstudy download sam --model vit_h --dest data/weights
    samstudy download model --model mobile_sam --dest data/weights
    samstudy synth --out DIR [--n-images N --seed S --width W --height H --force]

``run`` executes the study notebooks (shipped with the package) into ``results/<run>/`` (under
``--results``, default ``./results``) and writes ``results/<run>/report/``. The only other folder it
writes is the cache root (embeddings, ONNX exports): ``--cache-dir``, else ``$SAMSTUDY_CACHE_DIR``,
else ``$XDG_CACHE_HOME/samstudy`` or ``~/.cache/samstudy``; printed with its size at the start.
Relative paths in a config hang off the config file's folder.
Exit codes of ``run``: 0 every selected stage ran or was skipped; 1 a stage failed (stderr names
the stage and the cell); 2 a bad config, stage selection or notebook parameter (nothing ran; also every ``--dry-run`` error);
3 another process is running into the same ``results/<run>/`` (stderr names its pid, host, command
and start time; nothing was written); 130 interrupted.

``synth`` hands every argument (``--help`` included) to ``python -m samstudy.synthetic``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .locks import FolderLocked
    from .pipeline import PipelineError, run_study
    from .stages import config_stages

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"samstudy: config error: {e}", file=sys.stderr)
        return 2
    if args.executor or args.ray_address:  # command line over the config's run section
        import dataclasses

        run = dataclasses.replace(cfg.run, executor=args.executor or ("ray" if args.ray_address else cfg.run.executor),
                                  ray_address=args.ray_address or cfg.run.ray_address)
        try:
            from .executors import ExecutorSpec

            ExecutorSpec.of(run)
        except ValueError as e:
            print(f"samstudy: bad --executor / --ray-address: {e}", file=sys.stderr)
            return 2
        cfg = dataclasses.replace(cfg, run=run)
    run_name = args.run or cfg.name
    only = [s for item in (args.only or []) for s in item.split(",") if s]
    valid = [s.name for s in config_stages(cfg)]
    bad = [s for s in only if s not in valid]
    if bad:
        print(f"samstudy: --only: unknown stage(s) {bad}; the stages of {cfg.path.name} are: {', '.join(valid)}",
              file=sys.stderr)
        return 2
    if args.dry_run:
        try:
            return _dry_run(cfg, run_name, only, args)
        except Exception as e:  # noqa: BLE001 - a dry run reports in one line, never a traceback
            print(f"samstudy: dry run: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    try:
        result = run_study(cfg, run_name, results_root=Path(args.results) if args.results else None,
                           only=only or None, force=args.force, progress=not args.quiet,
                           cache_dir=args.cache_dir)
    except PipelineError as e:
        print(f"samstudy: {e}", file=sys.stderr)
        return 2
    except FolderLocked as e:
        print(f"samstudy: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("samstudy: interrupted; rerun the same command to resume (completed stages are skipped)",
              file=sys.stderr)
        return 130
    for o in result.outcomes:
        print(f"  {o.stage:16s} {o.status:12s} {o.seconds:7.1f} s")
    print(f"report: {result.layout.index}")
    if result.failure is not None:
        print(f"samstudy: {result.failure}", file=sys.stderr)
        print("Fix the cause and rerun the same command; completed stages are skipped.", file=sys.stderr)
        return 1
    return 0


def _dry_run(cfg, run_name: str, only: Sequence[str], args: argparse.Namespace) -> int:
    """Print, per stage, whether it would run and why (assuming upstream stages keep their outputs)."""
    from .files import cache_root
    from .pipeline import (PipelineError, _skip_reason, _upstream_hashes, package_notebooks, stage_input_hash,
                           stage_parameters, validate_parameters)
    from .stages import RunLayout, config_stages

    root = Path(args.results or "results").resolve()
    layout = RunLayout(root / run_name)
    nb_dir = package_notebooks()
    print(f"run folder: {layout.root}\ncache: {cache_root(args.cache_dir)}")
    will_run: set[str] = set()
    for s in config_stages(cfg):
        params = stage_parameters(cfg, s, layout)
        validate_parameters(nb_dir / s.notebook, params, origin=str(cfg.path.name))  # an error: exit 2
        try:
            if only and s.name not in only:
                print(f"  {s.name:16s} not selected")
                continue
            upstream = [d for d in s.deps if d in will_run]
            if upstream:
                reason: str | None = f"upstream {', '.join(upstream)} runs"
            else:
                h = stage_input_hash(nb_dir / s.notebook, params, _upstream_hashes(layout, s))
                reason = "forced" if args.force else _skip_reason(layout, s, h)
        except PipelineError as e:
            reason = str(e)
        if reason is not None:
            will_run.add(s.name)
        print(f"  {s.name:16s} {'skip (unchanged)' if reason is None else 'run: ' + reason}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    """Delegate to :mod:`samstudy.models.download` (verified, resumable, atomic)."""
    from .models import download

    try:
        if args.what == "coco":
            paths = download.download_coco(Path(args.dest), splits=tuple(args.splits))
            for part, folder in paths.items():
                print(f"{part}: {folder}")
        elif args.what == "sam":
            print(download.download_sam_checkpoint(args.model, Path(args.dest)))
        else:  # any registry model with an official checkpoint (SAM v1 names included)
            print(download.download_model_checkpoint(args.model, Path(args.dest)))
    except (download.DownloadError, download.ChecksumError, ValueError) as e:
        print(f"samstudy download: {e}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samstudy", description="Is SAM all you need for ML-assisted annotation?")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run (or resume) the study notebooks and write the HTML report")
    r.add_argument("--config", default="configs/demo.yaml", help="study config YAML (default: %(default)s)")
    r.add_argument("--run", help="run name: results/<run>/ (default: the config's name)")
    r.add_argument("--only", action="append", metavar="STAGE",
                   help="run only this stage (repeatable or comma-separated); upstream stages must have run")
    r.add_argument("--force", action="store_true", help="rerun selected stages even when unchanged")
    r.add_argument("--dry-run", action="store_true", help="show what would run and why, run nothing")
    r.add_argument("--results", help="results root (default: ./results)")
    r.add_argument("--cache-dir", help="cache root for embeddings and ONNX exports "
                                       "(default: $SAMSTUDY_CACHE_DIR, else $XDG_CACHE_HOME/samstudy or ~/.cache/samstudy)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--executor", choices=["local", "ray"],
                   help="where per-image work runs (default: the config's run.executor, else local); docs/RAY.md")
    r.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to join, e.g. auto or ray://head:10001 (implies --executor ray)")
    r.set_defaults(func=_cmd_run)

    d = sub.add_parser("download", help="download COCO or a SAM checkpoint (needs internet)")
    d.add_argument("what", choices=["coco", "sam", "model"])
    d.add_argument("--dest", required=True)
    d.add_argument("--model", default="vit_h",
                   help="checkpoint: vit_b/vit_l/vit_h (SAM), or with 'model' a registry name "
                        "(sam_hq_vit_b, mobile_sam, efficientvit_sam_l0, sam2.1_hiera_t, ...)")
    d.add_argument("--splits", nargs="+", default=["val2017", "train2017"], help="COCO splits")
    d.set_defaults(func=_cmd_download)

    # Listed for `samstudy --help` only: main() hands `synth ...` to the generator before argparse runs.
    sub.add_parser("synth", add_help=False,
                   help="write the synthetic probe set (COCO json + images): --out DIR [--n-images N --seed S ...]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["synth"]:  # every option (and --help) belongs to the generator's own parser
        from . import synthetic

        return int(synthetic.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
