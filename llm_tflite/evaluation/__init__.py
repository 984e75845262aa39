"""Held-out metrics, ``compare`` (strategies side by side) and ``bench`` (speed)."""
