"""Text filters: the profanity filter of the autocomplete app, and the plugin point for others.

A filter is any object with a ``name`` and ``find(text) -> str | None`` that returns what it
objects to in ``text`` (``None``: nothing). ``ProfanityFilter`` matches a word list; plugins
register other filters (a classifier, say) with the ``register_filters`` hook and users pick
them by name (``filter="my_classifier"``).

What the word list filter catches: listed words and phrases as whole words,
case-insensitively, also when letters are repeated (``shiiit``) or replaced by common
look-alikes (``@`` ``4`` for a, ``$`` ``5`` for s, ``1`` ``!`` for i/l, ``0`` for o, ``3`` for e,
``7`` for t). What it does not catch: misspellings beyond those, words split by spaces or
punctuation, other languages, and offensive meaning in inoffensive words. It is a guard
rail for a demo, not moderation.
"""

from __future__ import annotations

import functools
import os
import re

DEFAULT_WORDLIST = os.path.join(os.path.dirname(__file__), "data", "profanity_wordlist.txt")

#: Characters that commonly stand in for a letter.
LOOKALIKES = {"a": "a@4", "e": "e3", "i": "i1!", "l": "l1!", "o": "o0", "s": "s$5", "t": "t7", "g": "g9", "b": "b8"}


def _word_pattern(word: str) -> str:
    """A word as a regex: each letter (or a look-alike) may repeat; other characters are escaped."""
    parts = []
    for char in word.lower():
        if char.isspace():
            parts.append(r"\s+")
        elif char in LOOKALIKES:
            parts.append(f"[{re.escape(LOOKALIKES[char])}]+")
        else:
            parts.append(re.escape(char) + "+")
    return "".join(parts)


class ProfanityFilter:
    """Rejects text that contains a listed word.

    Args:
        words: the words (and phrases) to reject; default: ``DEFAULT_WORDLIST`` (see the file's
            header for its source and licence).
        extra: words to add to the list.
        allow: words to take off the list.

    Example:
        >>> f = ProfanityFilter(["darn"])
        >>> f.find("Well, D4RRN it!"), f.find("darning socks")
        ('D4RRN', None)
    """

    name = "profanity"

    def __init__(self, words=None, *, extra=(), allow=()):
        words = load_wordlist() if words is None else list(words)
        blocked = {w.strip().lower() for w in (*words, *extra) if w and w.strip()}
        blocked -= {w.strip().lower() for w in allow}
        self.words = sorted(blocked)
        # Longest first, so a phrase wins over a word it contains; whole words only.
        alternatives = "|".join(_word_pattern(w) for w in sorted(self.words, key=len, reverse=True))
        self._pattern = re.compile(rf"(?<![\w@$])(?:{alternatives})(?![\w@$])", re.IGNORECASE) if self.words else None

    def find(self, text: str) -> str | None:
        """The first listed word in ``text`` as it appears there, or ``None``."""
        if self._pattern is None:
            return None
        match = self._pattern.search(text)
        return match.group(0) if match else None


@functools.lru_cache(maxsize=1)
def default_filter() -> ProfanityFilter:
    return ProfanityFilter()


def load_wordlist(path: str = DEFAULT_WORDLIST) -> list[str]:
    """Words of a list file: one per line, ``#`` comments and blank lines skipped."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def resolve_filter(spec):
    """``None``/``False``: no filter; ``True``/``"profanity"``: the default list; a list of words;
    a registered filter's name; or any object with ``find(text)``."""
    from llm_tflite.errors import InvalidArgumentError

    if spec is None or spec is False:
        return None
    if spec is True or spec == "profanity":
        return default_filter()
    if isinstance(spec, str):
        from llm_tflite.plugins.registry import filters

        found = filters()
        if spec not in found:
            raise InvalidArgumentError(f"unknown filter {spec!r}; registered: {', '.join(sorted(found))}")
        return found[spec].item
    if isinstance(spec, (list, tuple, set, frozenset)):
        return ProfanityFilter(spec)
    if callable(getattr(spec, "find", None)):
        return spec
    raise InvalidArgumentError(f"filter must be True/False/None, a word list, a registered filter's name or an "
                               f"object with find(text); got {type(spec).__name__}")
