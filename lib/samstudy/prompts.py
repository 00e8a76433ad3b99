"""Box and point prompts derived from a ground-truth mask, and the ``Prompt`` record.

Conventions (see :mod:`samstudy.masks`):

- mask: ``bool (H, W)``, ``mask[row, col]``;
- box: ``float64 (4,)`` xyxy ``x0, y0, x1, y1`` in continuous pixel-edge coordinates, right/bottom
  edge exclusive (``x1 = last col + 1``), so ``x1 - x0`` is the width in pixels;
- point: ``(x, y) = (col, row)`` of a pixel; point arrays are ``float64 (K, 2)``; labels are
  ``int64 (K,)`` with 1 = positive (object), 0 = negative (background);
- ``image_hw = (H, W)``; randomness comes only from an explicit ``numpy.random.Generator``.

Definitions (identical to ``docs/STUDY.md``):

- **Tight box**: the bounding box of the ground-truth mask (:func:`tight_box`).
- **Loose box (buffer b)**: the tight box grown about its centre so that width and height each grow
  by the fraction ``b`` (b = 0.2 adds 10% of the width on the left and 10% on the right, 10% of the
  height on top and at the bottom), then clipped to the image ``[0, W] x [0, H]``
  (:func:`loose_box`). b = 0 is the tight box.
- **Jittered box (noise s)**: HQ-SAM's noisy-box model (:func:`jitter_box`): centre shifted and
  width/height changed by independent uniform amounts, ``cx += U(-1, 1) * s * w / 2``,
  ``w += U(-1, 1) * s * w`` (same for y/h), then clipped to the image with every side at least 1 px.
- **Extreme points**: left-, right-, top- and bottom-most pixels of the mask as in DEXTR
  (:func:`extreme_points`); during training, a random mask pixel near each extreme.
- **Centre point**: the mask pixel farthest from the mask boundary (:func:`interior_point`); up to
  tie-breaking this is the first simulated RITM click on an empty prediction.

Degenerate masks: an empty mask raises ``ValueError`` everywhere (it has no box, no extreme points,
no interior). A 1-pixel mask is valid: its box is 1 x 1, its four extreme points and its interior
point are that pixel.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from samstudy.clicks import next_click
from samstudy.masks import mask_box_xyxy

__all__ = [
    "tight_box", "loose_box", "jitter_box", "extreme_points", "extreme_points_box", "interior_point",
    "Prompt", "PromptMode", "MODE_SPECS", "CLICK_START_MODES", "DEFAULT_MODES", "parse_modes", "make_prompt",
]


# ----------------------------------------------------------------------------------------- helpers
def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask (H, W), got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _require_nonempty(mask: np.ndarray, what: str) -> None:
    if not mask.any():
        raise ValueError(f"empty mask: an object without pixels has no {what}")


def _image_hw(image_hw: Sequence[int]) -> tuple[int, int]:
    h, w = (int(v) for v in image_hw)
    if h < 1 or w < 1:
        raise ValueError(f"image_hw must be positive (H, W), got {tuple(image_hw)}")
    return h, w


def _as_box(box: Sequence[float]) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (4,):
        raise ValueError(f"expected a box of 4 values x0, y0, x1, y1, got shape {box.shape}")
    if not (box[2] >= box[0] and box[3] >= box[1]):
        raise ValueError(f"box must satisfy x1 >= x0 and y1 >= y0 (xyxy order), got {box.tolist()}")
    return box


def _clip_box(box: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    h, w = image_hw
    return np.clip(box, 0.0, [w, h, w, h]).astype(np.float64)


# ------------------------------------------------------------------------------------------- boxes
def tight_box(mask: np.ndarray) -> np.ndarray:
    """Tight box of a mask: ``float64 (4,)`` xyxy with exclusive right/bottom edges.

    ``x0 = min col``, ``y0 = min row``, ``x1 = max col + 1``, ``y1 = max row + 1`` of the mask's
    pixels (so a 1-pixel mask at (col 3, row 5) has box ``[3, 5, 4, 6]``).
    Raises ``ValueError`` on an empty mask.
    """
    mask = _as_mask(mask)
    _require_nonempty(mask, "tight box")
    return mask_box_xyxy(mask)


def loose_box(box: Sequence[float], buffer: float, image_hw: Sequence[int]) -> np.ndarray:
    """Loose box: ``box`` (xyxy ``(4,)``) grown about its centre by the fraction ``buffer``.

    With ``w = x1 - x0`` and ``h = y1 - y0``, the result is
    ``[x0 - b*w/2, y0 - b*h/2, x1 + b*w/2, y1 + b*h/2]`` clipped to ``[0, W] x [0, H]``
    (``image_hw = (H, W)``), so unclipped width and height are ``(1 + b) * w`` and ``(1 + b) * h``.
    Coordinates are not rounded. ``buffer = 0`` returns the (clipped) box unchanged.
    Returns ``float64 (4,)`` xyxy.
    """
    b = float(buffer)
    if not np.isfinite(b) or b < 0:
        raise ValueError(f"buffer must be a finite fraction >= 0, got {buffer}")
    box = _as_box(box)
    half = 0.5 * b * np.array([box[2] - box[0], box[3] - box[1]])
    grown = box + np.concatenate([-half, half])
    return _clip_box(grown, _image_hw(image_hw))


def jitter_box(box: Sequence[float], rng: np.random.Generator, noise: float,
               image_hw: Sequence[int]) -> np.ndarray:
    """Noisy box as in HQ-SAM's noisy-box test (their ``box_noise``), with our clipping rules.

    In centre/size form ``(cx, cy, w, h)`` of ``box`` (xyxy ``(4,)``), with four independent draws
    ``u ~ Uniform(-1, 1)`` from ``rng``::

        cx += u1 * noise * w / 2        cy += u2 * noise * h / 2
        w  += u3 * noise * w            h  += u4 * noise * h

    i.e. the centre moves by up to ``noise`` times half the side and each side changes by up to
    ``noise`` times itself. The box is then converted back to xyxy, clipped to ``[0, W] x [0, H]``
    (``image_hw = (H, W)``) and, if a side became shorter than 1 px (by clipping or a size change
    with ``noise >= 1``), widened to 1 px about its (clamped) centre inside the image.
    Returns ``float64 (4,)`` xyxy; the same generator state gives the same box.
    """
    s = float(noise)
    if not np.isfinite(s) or s < 0:
        raise ValueError(f"noise must be a finite scale >= 0, got {noise}")
    box = _as_box(box)
    hw = _image_hw(image_hw)
    size = np.array([box[2] - box[0], box[3] - box[1]])
    centre = 0.5 * (box[:2] + box[2:])
    u = rng.uniform(-1.0, 1.0, size=4)
    centre = centre + u[:2] * s * size / 2.0
    size = np.abs(size + u[2:] * s * size)  # |.|: a side flipped by noise >= 1 stays a side
    out = _clip_box(np.concatenate([centre - size / 2.0, centre + size / 2.0]), hw)
    return _ensure_min_side(out, hw)


def _ensure_min_side(box: np.ndarray, image_hw: tuple[int, int], min_side: float = 1.0) -> np.ndarray:
    """Widen any side shorter than ``min_side`` about its centre, kept inside the image."""
    box = box.copy()
    h, w = image_hw
    for lo, hi, limit in ((0, 2, w), (1, 3, h)):
        if box[hi] - box[lo] < min_side:
            c = float(np.clip(0.5 * (box[lo] + box[hi]), min_side / 2, limit - min_side / 2))
            box[lo], box[hi] = c - min_side / 2, c + min_side / 2
    return box


# ------------------------------------------------------------------------------------------ points
def _median_pixel(coords: np.ndarray) -> int:
    """Index of the lower-median entry of ``coords`` (an actual element, deterministic)."""
    order = np.argsort(coords, kind="stable")
    return int(order[(coords.size - 1) // 2])


def extreme_points(mask: np.ndarray, rng: np.random.Generator | None = None,
                   jitter_px: int = 0) -> np.ndarray:
    """Extreme points of a mask (DEXTR): ``float64 (4, 2)`` of ``(x, y)``, order left, right, top, bottom.

    - left: a pixel with the minimal column; right: maximal column; top: minimal row; bottom:
      maximal row.
    - Ties (several pixels on the extreme column/row) are broken deterministically by the median:
      for left/right the tied pixel with the lower-median row, for top/bottom the tied pixel with
      the lower-median column (DEXTR picks a random tied pixel; we want evaluation prompts that do
      not depend on a seed). The chosen pixel is always a mask pixel.
    - Training jitter (``rng`` given and ``jitter_px > 0``): each point is replaced by a pixel drawn
      uniformly from the mask pixels within Chebyshev distance ``jitter_px`` (a square window of
      side ``2 * jitter_px + 1``) of the deterministic extreme point. The result stays on the mask.

    Raises ``ValueError`` on an empty mask. A 1-pixel mask returns that pixel four times.
    """
    mask = _as_mask(mask)
    _require_nonempty(mask, "extreme points")
    if jitter_px < 0:
        raise ValueError(f"jitter_px must be >= 0, got {jitter_px}")
    rows, cols = np.nonzero(mask)
    out = np.empty((4, 2), dtype=np.float64)
    for i, (coord, other, pick_max) in enumerate(((cols, rows, False), (cols, rows, True),
                                                   (rows, cols, False), (rows, cols, True))):
        target = coord.max() if pick_max else coord.min()
        tied = np.flatnonzero(coord == target)
        j = tied[_median_pixel(other[tied])]
        out[i] = cols[j], rows[j]
    if rng is not None and jitter_px > 0:
        for i in range(4):
            near = (np.abs(cols - out[i, 0]) <= jitter_px) & (np.abs(rows - out[i, 1]) <= jitter_px)
            cand = np.flatnonzero(near)  # never empty: contains the extreme pixel itself
            j = cand[rng.integers(cand.size)]
            out[i] = cols[j], rows[j]
    return out


def extreme_points_box(points: np.ndarray) -> np.ndarray:
    """Box spanned by 4 extreme points ``(4, 2)`` xy (left, right, top, bottom): ``float64 (4,)`` xyxy.

    ``[left.x, top.y, right.x + 1, bottom.y + 1]`` (pixel-edge convention), which equals the tight
    box when the points are the un-jittered extreme points. Jittered points may not be extreme in
    their own order, so min/max are taken over all four points.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max() + 1, pts[:, 1].max() + 1],
                    dtype=np.float64)


def interior_point(mask: np.ndarray) -> np.ndarray:
    """The mask pixel farthest from the mask boundary: ``float64 (1, 2)`` ``(x, y)``.

    Distance is the Euclidean distance transform (``scipy.ndimage.distance_transform_edt``) of the
    mask zero-padded by 1 pixel, so the image border counts as boundary. Ties (a ridge of equal
    maxima, e.g. the middle line of a non-square rectangle) go to the tied pixel nearest the mean
    position of all tied pixels, then to the first in row-major order; so a rectangle gives its
    centre pixel (lower-middle pixel for even sides) and a long strip its middle, not an end.
    This is the RITM first click on an empty prediction up to that tie rule (RITM takes the first
    row-major maximum; see :mod:`samstudy.clicks`). Raises ``ValueError`` on an empty mask.
    """
    mask = _as_mask(mask)
    _require_nonempty(mask, "interior point")
    r0, c0, r1, c1 = _nonzero_bounds(mask)
    # Crop to the mask's box + 1 px of zeros: identical distances, much less work.
    dist = ndimage.distance_transform_edt(np.pad(mask[r0:r1, c0:c1], 1))[1:-1, 1:-1]
    rr, cc = np.nonzero(dist == dist.max())  # row-major order
    d2 = (rr - rr.mean()) ** 2 + (cc - cc.mean()) ** 2
    k = int(np.argmin(d2))  # first of the nearest-to-mean ties
    return np.array([[cc[k] + c0, rr[k] + r0]], dtype=np.float64)


def _nonzero_bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


# ------------------------------------------------------------------------------------------ Prompt
@dataclass
class Prompt:
    """One prompt for a promptable segmenter.

    - ``mode``: the prompt mode key (``PromptMode.key``), e.g. ``"loose_box[b=0.2]"``;
    - ``box``: ``float64 (4,)`` xyxy pixel edges, or ``None``;
    - ``points``: ``float64 (K, 2)`` of ``(x, y)``, or ``None``;
    - ``labels``: ``int64 (K,)``, 1 positive / 0 negative, or ``None`` (set iff ``points`` is);
    - ``params``: the mode's parameters (JSON-serialisable) for the ``prompt_params`` column.
    """

    mode: str
    box: np.ndarray | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.box is not None:
            self.box = _as_box(self.box)
        if (self.points is None) != (self.labels is None):
            raise ValueError("points and labels must be given together")
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
            self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
            if self.labels.shape[0] != self.points.shape[0]:
                raise ValueError(f"{self.points.shape[0]} points but {self.labels.shape[0]} labels")
            if not np.isin(self.labels, (0, 1)).all():
                raise ValueError(f"labels must be 1 (positive) or 0 (negative), got {self.labels}")
        if self.box is None and self.points is None:
            raise ValueError("a prompt needs a box, points, or both")


# ------------------------------------------------------------------------------------- PromptMode
# name -> ordered {param: default}; the order fixes the key string.
MODE_SPECS: dict[str, dict[str, Any]] = {
    "tight_box": {},
    "loose_box": {"buffer": 0.2},
    "jitter_box": {"noise": 0.2},
    "extreme_points": {"jitter_px": 0},
    "extreme_points_box": {"jitter_px": 0},
    "center_point": {},
    "box_center_point": {},
    "clicks": {"start": "click", "max_clicks": 20, "buffer": 0.2},  # buffer: only with start=loose_box
}
# Short names used in keys, and params shown only when not at their default.
_KEY_ALIASES = {"buffer": "b"}
_HIDDEN_AT_DEFAULT = {"jitter_px"}
# Starts of a click sequence (the prompt of click 0; "click": the first click itself) and the one-shot
# mode each one is, whose support a model must declare to run that start (models.base.check_model_modes).
CLICK_START_MODES = {"click": "center_point", "box": "tight_box", "loose_box": "loose_box",
                     "extreme_points": "extreme_points"}
_CLICK_STARTS = tuple(CLICK_START_MODES)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return format(v, "g")
    return str(v)


def _coerce(name: str, param: str, value: Any) -> Any:
    default = MODE_SPECS[name][param]
    try:
        if isinstance(default, bool) or isinstance(default, str):
            return str(value)
        if isinstance(default, int):
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: parameter {param}={value!r} is not a valid {type(default).__name__}") from None


@dataclass(frozen=True)
class PromptMode:
    """A prompt mode: ``name`` (one of ``MODE_SPECS``) and its ``params`` (defaults filled in).

    ``key`` is a stable string used in result rows, e.g. ``"tight_box"``, ``"loose_box[b=0.2]"``,
    ``"jitter_box[noise=0.2]"``, ``"clicks[start=click,max_clicks=20]"``; parameters appear in the
    fixed order of ``MODE_SPECS``, ``buffer`` is written ``b``, and ``jitter_px`` only when non-zero.
    ``parse_modes([mode.key])`` gives the mode back.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in MODE_SPECS:
            raise ValueError(f"unknown prompt mode {self.name!r}; known: {sorted(MODE_SPECS)}")
        spec = MODE_SPECS[self.name]
        params = dict(self.params)
        # accept aliases ("b") as well as full names ("buffer")
        for full, short in _KEY_ALIASES.items():
            if short in params and full in spec:
                params[full] = params.pop(short)
        unknown = set(params) - set(spec)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameters {sorted(unknown)}; allowed: {list(spec)}")
        if self.name == "clicks" and str(params.get("start", spec["start"])) != "loose_box":
            if "buffer" in params:
                raise ValueError("clicks: buffer is a parameter of start=loose_box only")
            spec = {k: v for k, v in spec.items() if k != "buffer"}  # keys and params as before starts grew
        full = {p: _coerce(self.name, p, params.get(p, d)) for p, d in spec.items()}
        if self.name in ("loose_box", "jitter_box"):
            p = "buffer" if self.name == "loose_box" else "noise"
            if not np.isfinite(full[p]) or full[p] < 0:
                raise ValueError(f"{self.name}: {p} must be >= 0, got {full[p]}")
        if "jitter_px" in full and full["jitter_px"] < 0:
            raise ValueError(f"{self.name}: jitter_px must be >= 0")
        if self.name == "clicks":
            if full["start"] not in _CLICK_STARTS:
                raise ValueError(f"clicks: start must be one of {_CLICK_STARTS}, got {full['start']!r}")
            if full["max_clicks"] < 1:
                raise ValueError("clicks: max_clicks must be >= 1")
            if "buffer" in full and not (np.isfinite(full["buffer"]) and full["buffer"] >= 0):
                raise ValueError(f"clicks: buffer must be >= 0, got {full['buffer']}")
        object.__setattr__(self, "params", full)

    @property
    def key(self) -> str:
        shown = [(p, v) for p, v in self.params.items()
                 if not (p in _HIDDEN_AT_DEFAULT and v == MODE_SPECS[self.name][p])]
        if not shown:
            return self.name
        return f"{self.name}[" + ",".join(f"{_KEY_ALIASES.get(p, p)}={_fmt(v)}" for p, v in shown) + "]"

    @property
    def buffer(self) -> float | None:
        """Box buffer for the ``buffer`` result column: b for loose boxes, 0 for the tight box, else None."""
        if self.name == "loose_box":
            return float(self.params["buffer"])
        if self.name == "tight_box":
            return 0.0
        return None

    @property
    def required_modes(self) -> frozenset[str]:
        """Names of the modes a model must decode to run this one: itself, and for a click sequence
        also the one-shot mode of its start (:data:`CLICK_START_MODES`; ``start=click`` needs
        ``center_point``, a single positive point)."""
        if self.name == "clicks":
            return frozenset({self.name, CLICK_START_MODES[self.params["start"]]})
        return frozenset({self.name})

    @property
    def is_interactive(self) -> bool:
        """True for the click mode, which the engine drives click by click."""
        return self.name == "clicks"

    def params_json(self) -> str:
        """Parameters as a JSON string with sorted keys (the ``prompt_params`` column)."""
        return json.dumps(dict(self.params), sort_keys=True)

    def __str__(self) -> str:
        return self.key

    def __hash__(self) -> int:  # params is a dict; the key identifies the mode
        return hash(self.key)


_KEY_RE = re.compile(r"^\s*([a-z_]+)\s*(?:\[(.*)\])?\s*$")


def _parse_key(text: str) -> PromptMode:
    m = _KEY_RE.match(text)
    if not m:
        raise ValueError(f"cannot parse prompt mode {text!r}; expected e.g. 'loose_box[b=0.2]'")
    params: dict[str, Any] = {}
    if m.group(2):
        for item in m.group(2).split(","):
            if "=" not in item:
                raise ValueError(f"cannot parse parameter {item!r} in prompt mode {text!r}")
            k, v = item.split("=", 1)
            params[k.strip()] = v.strip()
    return PromptMode(m.group(1), params)


def parse_modes(specs: Iterable[str | Mapping[str, Any] | PromptMode]) -> list[PromptMode]:
    """Parse prompt modes from a config list.

    Each item is a ``PromptMode``; a key string (``"tight_box"``, ``"loose_box[b=0.3]"``); or a dict
    ``{"name": ..., <param>: value, ...}`` (params may also sit under ``"params"``). In a dict a
    list value expands into one mode per value (cartesian product over list-valued params), e.g.
    ``{"name": "loose_box", "buffer": [0, 0.2]}``. Duplicates (same key) are dropped, order kept.
    """
    out: dict[str, PromptMode] = {}
    for spec in specs:
        if isinstance(spec, PromptMode):
            modes = [spec]
        elif isinstance(spec, str):
            modes = [_parse_key(spec)]
        elif isinstance(spec, Mapping):
            spec = dict(spec)
            if "name" not in spec:
                raise ValueError(f"prompt mode dict needs a 'name': {spec}")
            name = spec.pop("name")
            params = dict(spec.pop("params", {}) or {})
            params.update(spec)
            names = list(params)
            choices = [v if isinstance(v, (list, tuple)) else [v] for v in params.values()]
            modes = [PromptMode(name, dict(zip(names, combo))) for combo in itertools.product(*choices)]
        else:
            raise TypeError(f"cannot parse prompt mode from {type(spec).__name__}: {spec!r}")
        for mode in modes:
            out.setdefault(mode.key, mode)
    return list(out.values())


DEFAULT_MODES: list[PromptMode] = parse_modes([
    "tight_box",
    {"name": "loose_box", "buffer": [0.0, 0.1, 0.2, 0.3, 0.5]},
    {"name": "jitter_box", "noise": 0.2},
    "extreme_points",
    "extreme_points_box",
    "center_point",
    "box_center_point",
    {"name": "clicks", "start": "click", "max_clicks": 20},
])


def with_buffer_sweep(specs: Iterable[str | Mapping[str, Any] | PromptMode],
                      buffer_sweep: Iterable[float]) -> list[PromptMode]:
    """The modes ``specs`` plus one loose box per positive buffer of ``buffer_sweep`` (b = 0 is the
    tight box itself, which the sweep's curve takes from ``tight_box``), duplicates dropped."""
    positive = [float(b) for b in buffer_sweep if float(b) > 0]
    return parse_modes(list(specs) + ([{"name": "loose_box", "buffer": positive}] if positive else []))


# ------------------------------------------------------------------------------------ make_prompt
def make_prompt(mode: PromptMode | str, mask: np.ndarray, image_hw: Sequence[int],
                rng: np.random.Generator | None = None) -> Prompt:
    """Build the prompt of ``mode`` for the ground-truth ``mask`` (``bool (H, W)``).

    - ``tight_box``: box = :func:`tight_box`.
    - ``loose_box``: box = :func:`loose_box` of the tight box with ``buffer``.
    - ``jitter_box``: box = :func:`jitter_box` of the tight box with ``noise`` (needs ``rng``).
    - ``extreme_points``: 4 positive points (left, right, top, bottom) from :func:`extreme_points`
      (``jitter_px > 0`` needs ``rng``).
    - ``extreme_points_box``: the same 4 points plus :func:`extreme_points_box`.
    - ``center_point``: 1 positive point, :func:`interior_point`.
    - ``box_center_point``: tight box + 1 positive point, :func:`interior_point`.
    - ``clicks``: the *initial* prompt of a click session (click 0, or click 1 for ``start="click"``);
      the engine then drives :class:`samstudy.clicks.ClickSimulator` and keeps this prompt in every
      later step. ``start="click"``: the first RITM click (:func:`samstudy.clicks.next_click`) on an
      empty prediction, always positive; ``start="box"``: the tight box; ``start="loose_box"``: the
      loose box with ``buffer``; ``start="extreme_points"``: the 4 extreme points (positive).

    Raises ``ValueError`` on an empty mask or a mask whose shape differs from ``image_hw``.
    """
    if isinstance(mode, str):
        mode = _parse_key(mode)
    mask = _as_mask(mask)
    hw = _image_hw(image_hw)
    if mask.shape != hw:
        raise ValueError(f"mask shape {mask.shape} differs from image_hw {hw}")
    _require_nonempty(mask, f"{mode.name} prompt")
    p = mode.params
    kw: dict[str, Any] = {}
    if mode.name == "tight_box" or (mode.name == "clicks" and p["start"] == "box"):
        kw["box"] = tight_box(mask)
    elif mode.name == "loose_box" or (mode.name == "clicks" and p["start"] == "loose_box"):
        kw["box"] = loose_box(tight_box(mask), p["buffer"], hw)
    elif mode.name == "jitter_box":
        if rng is None:
            raise ValueError("jitter_box needs a numpy.random.Generator (rng)")
        kw["box"] = jitter_box(tight_box(mask), rng, p["noise"], hw)
    elif mode.name == "clicks" and p["start"] == "extreme_points":
        kw["points"], kw["labels"] = extreme_points(mask), np.ones(4, dtype=np.int64)
    elif mode.name in ("extreme_points", "extreme_points_box"):
        if p["jitter_px"] > 0 and rng is None:
            raise ValueError(f"{mode.name} with jitter_px > 0 needs a numpy.random.Generator (rng)")
        pts = extreme_points(mask, rng, p["jitter_px"])
        kw["points"], kw["labels"] = pts, np.ones(4, dtype=np.int64)
        if mode.name == "extreme_points_box":
            kw["box"] = extreme_points_box(pts)
    elif mode.name == "clicks":  # start == "click"
        first = next_click(mask, np.zeros_like(mask))
        kw["points"], kw["labels"] = np.array([[first.x, first.y]], float), np.ones(1, dtype=np.int64)
    elif mode.name in ("center_point", "box_center_point"):
        if mode.name == "box_center_point":
            kw["box"] = tight_box(mask)
        kw["points"], kw["labels"] = interior_point(mask), np.ones(1, dtype=np.int64)
    else:  # pragma: no cover - MODE_SPECS and this function must list the same modes
        raise AssertionError(mode.name)
    return Prompt(mode=mode.key, params=dict(p), **kw)
