"""Structured output: decoding constrained by a token mask so the text always parses.

``json_constraint(runner, schema)`` compiles a JSON schema (or ``None``: any JSON object) with
llguidance, which builds each step's mask of allowed tokens from the tokenizer's vocabulary
lazily, as the output grows (no up-front index over the vocabulary, no PyTorch). The runner's
samplers choose among the allowed tokens only; once the value is complete only the stop tokens
are allowed, so generation ends with ``finish_reason == "stop"``. (LiteRT-LM's engine uses
llguidance for its constrained decoding too.) ``docs/chat.md`` compares it with outlines-core and
xgrammar.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from llm_tflite.errors import InvalidArgumentError, UnsupportedRuntimeError

#: The largest schema read (characters of its JSON).
MAX_SCHEMA_CHARS = 64 * 1024
_lock = threading.Lock()


def _llguidance():
    try:
        import llguidance
        import llguidance.numpy  # noqa: F401
    except ImportError as e:
        raise UnsupportedRuntimeError("JSON-constrained output needs llguidance: pip install llguidance") from e
    return llguidance


def ll_tokenizer(runner, stop_ids: frozenset):
    """llguidance's view of the runner's tokenizer (every id's bytes), made once per runner and stop set."""
    cache = runner.__dict__.setdefault("_ll_tokenizers", {})
    with _lock:
        found = cache.get(stop_ids)
        if found is None:
            llguidance = _llguidance()
            tokenizer, vocab = runner.tokenizer, runner.vocab_size
            tokens = [tokenizer.decode_bytes([i]) for i in range(vocab)]
            specials = [i for i, t in enumerate(tokens) if not t]  # control tokens: never text

            class Wrapped:  # what llguidance.TokenizerWrapper reads
                eos_token_id = min(stop_ids) if stop_ids else (specials[0] if specials else 0)
                bos_token_id = None
                special_token_ids = specials

                def __init__(self):
                    self.tokens = tokens

                def __call__(self, text):
                    return tokenizer.encode(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)

            found = cache[stop_ids] = llguidance.LLTokenizer(llguidance.TokenizerWrapper(Wrapped()), n_vocab=vocab,
                                                             eos_token=sorted(stop_ids) or None)
        return found


def check_schema(schema) -> dict | None:
    """A JSON schema as a dict (given as a dict or its JSON text), or None for any JSON object."""
    if schema is None:
        return None
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise InvalidArgumentError(f"json_schema is not valid JSON: {e}") from e
    if not isinstance(schema, dict):
        raise InvalidArgumentError(f"json_schema must be a JSON schema object, not {type(schema).__name__}")
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise InvalidArgumentError(f"json_schema is longer than {MAX_SCHEMA_CHARS} characters")
    return schema


class JSONConstraint:
    """A compiled schema: ``wrap(choose)`` gives a sampler that picks only tokens the schema allows.

    Args:
        runner: the ``InterpreterRunner`` (its tokenizer and vocabulary).
        schema: a JSON schema (dict or JSON text), or None for any JSON object (``json_object`` mode).
        stop_ids: the tokens that end the generation once the value is complete.
    """

    def __init__(self, runner, schema, stop_ids):
        llguidance = _llguidance()
        self.schema = check_schema(schema)
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        if not self.stop_ids:
            raise InvalidArgumentError("JSON-constrained output needs a stop token to end on; this file has none")
        self.tokenizer = ll_tokenizer(runner, self.stop_ids)
        self.vocab_size = runner.vocab_size
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            self.schema if self.schema is not None else {"type": "object"},
            overrides={"whitespace_flexible": False})  # compact: no unbounded runs of whitespace
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error and not error.startswith("WARNING"):
            raise InvalidArgumentError(f"json_schema cannot be used: {error[:300]}")
        self.grammar = grammar

    def matcher(self):
        matcher = _llguidance().LLMatcher(self.tokenizer, self.grammar, log_level=0)
        if matcher.is_error():
            raise InvalidArgumentError(f"json_schema cannot be used: {matcher.get_error()[:300]}")
        return matcher

    def wrap(self, choose):
        """``choose(logits, history)`` restricted to the allowed tokens; a fresh matcher per generation."""
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

        matcher = self.matcher()
        bitmask = allocate_token_bitmask(1, self.vocab_size)
        vocab = self.vocab_size

        def constrained(logits, history):
            fill_next_token_bitmask(matcher, bitmask)
            allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:vocab].astype(bool)
            token = int(choose(np.where(allowed, logits, -np.inf).astype(np.float32), history))
            if not allowed[token]:  # a sampler that ignored the mask (a plugin's)
                token = int(np.argmax(np.where(allowed, logits, -np.inf)))
            if token not in self.stop_ids and not matcher.consume_token(token):
                raise InvalidArgumentError(f"the JSON constraint failed: {matcher.get_error()[:300]}")
            return token

        return constrained
