"""The examples/ scripts that take minutes, each in a test of its own file, so the suite's two
workers (pytest-xdist, ``--dist loadfile``) start them early and side by side with the rest."""

import sys

import pytest

pytestmark = pytest.mark.slow


def test_tang_example_quick(tmp_path):
    """examples/tang_poems.py --quick: the tutorial flow end to end, figures printed."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "examples"))
    import tang_poems

    figures = tang_poems.main(["--quick", "--out", str(tmp_path)])
    assert figures["heldout_drop"] >= 0.30, figures
    assert figures["cjk_fraction_tflite"] >= 0.5, figures
