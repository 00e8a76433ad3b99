"""results.timing_tables: encoder time per *encoded* image, never diluted by cache hits."""
from __future__ import annotations

import math

import pandas as pd

from samstudy.results import timing_tables


def _row(model: str, image_id: int, ann_id: int, cached: bool, enc: float, dec: float,
         status: str = "ok", mode: str = "tight_box") -> dict:
    return {"dataset": "d", "model": model, "model_label": model.upper(), "image_id": image_id,
            "ann_id": ann_id, "prompt_mode": mode, "cached": cached, "time_encode_s": enc,
            "time_decode_s": dec, "status": status}


def test_encode_time_counts_only_encoded_images_and_is_nan_when_all_cached():
    rows = pd.DataFrame([
        _row("a", 1, 10, False, 2.0, 0.1), _row("a", 1, 11, False, 2.0, 0.3),   # image 1 encoded: 2 s
        _row("a", 2, 20, True, 0.0, 0.2),                                       # image 2 from the cache
        _row("a", 3, 30, False, 4.0, 0.4, mode="extreme_points"),               # image 3 encoded: 4 s
        _row("a", 4, 40, False, 0.0, 0.0, status="skipped"),                    # skipped: not an image scored
        _row("b", 1, 10, True, 0.0, 0.5), _row("b", 2, 20, True, 0.0, 0.7),     # every embedding cached
    ])
    enc, dec = timing_tables(rows)
    a = enc.set_index("model_label").loc["A"]
    assert (a["images"], a["cached"], a["encoded"]) == (3, 1, 2)
    assert a["encode s (total)"] == 6.0 and a["encode s / encoded image"] == 3.0   # not 6/3 = 2
    b = enc.set_index("model_label").loc["B"]
    assert (b["images"], b["cached"], b["encoded"]) == (2, 2, 0)
    assert math.isnan(b["encode s / encoded image"])                             # not 0.0
    d = dec.set_index(["model_label", "prompt_mode"])["decode s / object"]
    assert math.isclose(d.loc[("A", "tight_box")], 0.2)
    assert d.loc[("A", "extreme_points")] == 0.4 and d.loc[("B", "tight_box")] == 0.6
