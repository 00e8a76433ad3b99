"""Progress bars of the long loops (engine images, training steps) that also reach the command line.

A notebook kernel run by ``samstudy run`` draws tqdm as a widget, which the terminal never sees. The
runner therefore sets ``$SAMSTUDY_PROGRESS_FILE`` (:data:`PROGRESS_ENV`) for the kernel; :func:`tqdm`
then draws a plain-text bar (rate, elapsed<remaining, postfix) into that file, and the runner prints
its latest state every few seconds and its final line (``pipeline.follow_progress``). Without the
variable (a notebook opened by hand, a script) it is ``tqdm.auto.tqdm``.
"""
from __future__ import annotations

import os
from typing import Any

from tqdm.std import tqdm as _text_tqdm

PROGRESS_ENV = "SAMSTUDY_PROGRESS_FILE"


class _FileBar(_text_tqdm):
    """A text bar appended to a file it owns (closed with the bar)."""

    def __init__(self, *args: Any, path: str, **kwargs: Any) -> None:
        self._fh = open(path, "a", encoding="utf-8")
        super().__init__(*args, file=self._fh, ascii=True, ncols=120, mininterval=1.0, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if not self._fh.closed:
                self._fh.close()


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(*args, **kwargs)``, or a text bar into ``$SAMSTUDY_PROGRESS_FILE`` when set."""
    path = os.environ.get(PROGRESS_ENV)
    if not path or kwargs.get("disable"):
        from tqdm.auto import tqdm as auto

        return auto(*args, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    return _FileBar(*args, path=path, **kwargs)


def note(message: str) -> None:
    """Tell the user about a one-time cost (e.g. an ONNX export): into the progress file when a run
    follows one, so that it reaches the command line and not the report page (a kernel's stderr
    lands in the page as a red log block), else on stderr."""
    import sys

    path = os.environ.get(PROGRESS_ENV)
    if not path:
        print(message, file=sys.stderr, flush=True)
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n" + message + "\n")  # ends a bar line the note would otherwise join
