"""The context-window rule of the autocomplete app: the last N words of the text.

Words are runs of non-space characters, except that each CJK ideograph, kana and Hangul
syllable counts as a word of its own (Chinese and Japanese are written without spaces, and
one such character carries about as much as a short English word). The window starts at
the first kept word and keeps the text as typed from there (inner spaces, newlines and any
trailing space).
"""

from __future__ import annotations

import re

_CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f"
_WORD = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def window_text(text: str, window_words: int) -> str:
    """The end of ``text`` from its ``window_words``-th last word on (all of it if it has fewer).

    Example:
        >>> window_text("To be, or not to be: that is the question", 3)
        'is the question'
        >>> window_text("昨夜雨疏风骤", 4)
        '雨疏风骤'
    """
    starts = [m.start() for m in _WORD.finditer(text)]
    return text if len(starts) <= window_words else text[starts[-window_words]:]
