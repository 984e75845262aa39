"""Progress bars that stay quiet when output is not a terminal."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    """``tqdm`` with project defaults; disabled by ``LLM_TFLITE_NO_PROGRESS=1``."""
    kwargs.setdefault("disable", os.environ.get("LLM_TFLITE_NO_PROGRESS") == "1")
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
