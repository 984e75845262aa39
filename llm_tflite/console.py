"""Progress bars that stay quiet when output is not a terminal."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    """``tqdm`` with project defaults: off when stderr is not a terminal or ``LLM_TFLITE_NO_PROGRESS=1``."""
    kwargs.setdefault("disable", True if os.environ.get("LLM_TFLITE_NO_PROGRESS") == "1" else None)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
