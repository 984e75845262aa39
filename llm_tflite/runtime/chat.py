"""Chat with an instruction-tuned file: its template, its end-of-turn stops, and KV caches kept
between turns.

``ChatFormat`` is the file's ``chat`` record (``llm_tflite.tokenizers.chat_template`` renders its
template in a sandbox). ``PrefixCache`` keeps a few sequences (KV caches) with the tokens they
hold: a new request continues the one sharing the longest prefix with its prompt, so a turn
prefills only its new tokens. ``Conversation`` is one chat with one such cache, which it can save
to a file and restore (``save`` / ``Conversation.load``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading

import numpy as np

from llm_tflite.errors import ContextLengthError, ConversationFileError, InvalidArgumentError
from llm_tflite.runtime.results import TextStream
from llm_tflite.tokenizers.chat_template import ChatTemplate, check_messages

#: Conversation files: magic, then a little-endian u32 header length, the JSON header, the caches.
CONVERSATION_MAGIC = b"LLMTFLITE-CHAT\x00\x01"
MAX_HEADER_BYTES = 64 << 20


class ChatFormat:
    """How a file chats: its template and the tokens that end a turn."""

    def __init__(self, chat: dict, tokenizer):
        self.template = ChatTemplate(chat["template"], bos_token=chat.get("bos_token"), eos_token=chat.get("eos_token"))
        self.stop_token_ids = set(int(i) for i in chat.get("stop_token_ids", []))
        self.tokenizer = tokenizer

    def render(self, messages, add_generation_prompt: bool = True, **variables) -> str:
        return self.template.render(messages, add_generation_prompt=add_generation_prompt, **variables)

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt: special tokens written out become their ids."""
        encode = getattr(self.tokenizer, "encode_with_special_tokens", self.tokenizer.encode)
        return list(encode(text))


def fit_messages(messages: list[dict], fits) -> list[dict]:
    """``messages`` with the oldest turns dropped until ``fits(messages)``: system messages at the
    start are kept, and so is the last message; a turn (a user message and the replies after it) is
    dropped whole. ``ContextLengthError`` when even the last message alone does not fit.
    Binary search over the cut: a few renders, however long the history."""
    start = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    head, body = messages[:start], messages[start:]
    # where the kept part may begin: the first message, each later user message, and the last message
    cuts = [0] + [i for i in range(1, len(body)) if body[i]["role"] == "user"]
    if len(body) - 1 not in cuts:
        cuts.append(len(body) - 1)
    if fits(head + body):
        return head + body
    low, high = 1, len(cuts) - 1  # fewer messages never make the prompt longer
    if high < low or not fits(head + body[cuts[high]:]):
        raise ContextLengthError("the last message does not fit the model's context (with room for the reply); "
                                 "shorten it, ask for fewer tokens, or convert with a larger --context-length")
    while low < high:
        middle = (low + high) // 2
        if fits(head + body[cuts[middle]:]):
            high = middle
        else:
            low = middle + 1
    kept = head + body[cuts[low]:]
    fits(kept)  # the caller reads what the last call rendered
    return kept


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """Up to ``capacity`` sequences (KV caches) with the tokens each holds, for reuse by prompts that
    start the same way (a conversation's next turn, or a client sending its history again).

    ``take(ids)`` removes and returns the entry sharing the longest prefix with ``ids`` (its
    position moved back to the shared length), or None when no entry has at least half its tokens
    in the prompt (it is left for the conversation it belongs to); ``put(sequence, tokens)`` stores one,
    evicting the least recently used.
    """

    def __init__(self, capacity: int = 1):
        if not isinstance(capacity, int) or capacity < 0:
            raise InvalidArgumentError(f"the chat cache capacity must be a non-negative integer, got {capacity!r}")
        self.capacity = capacity
        self.entries: list[tuple[object, list[int]]] = []
        self._lock = threading.Lock()

    def take(self, ids: list[int]):
        with self._lock:
            best, shared = None, 0
            for i, (_, tokens) in enumerate(self.entries):
                n = common_prefix(tokens, ids)
                # only an entry the prompt continues (most of its tokens): one that shares just a start
                # token or a system prompt stays for its own conversation
                if n > shared and 2 * n >= len(tokens):
                    best, shared = i, n
            if best is None:
                return None
            sequence, _ = self.entries.pop(best)
        position = min(shared, len(ids) - 1)  # at least one token is fed for the next logits
        if not sequence.can_rewind_to(position):
            return None  # ring caches have written over what the earlier position would see again
        sequence.position = position
        return sequence

    def put(self, sequence, tokens: list[int]) -> None:
        if not self.capacity:
            return
        with self._lock:
            self.entries.append((sequence, list(tokens)))
            del self.entries[: max(len(self.entries) - self.capacity, 0)]

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()


class Conversation:
    """One chat with a file: its messages, and a KV cache that carries over between turns, so a turn
    prefills only its new tokens.

    Made by ``InterpreterRunner.conversation``. ``send(text, **options)`` adds a user message and
    returns the reply's ``GenerationResult`` (``stream`` yields it piece by piece); the reply joins
    ``messages``. Options are ``InterpreterRunner.chat``'s. When the history outgrows the context,
    the oldest turns are left out of the prompt (system messages kept); ``messages`` keeps them all.

    Example:
        >>> chat = runner.conversation(system="Answer in one sentence.")  # doctest: +SKIP
        >>> chat.send("What is LiteRT?").text  # doctest: +SKIP
        >>> chat.save("chat.llmchat")  # doctest: +SKIP
        >>> chat = Conversation.load(runner, "chat.llmchat")  # doctest: +SKIP
    """

    def __init__(self, runner, messages=(), *, system: str | None = None):
        self.runner = runner
        runner.engine.require_sequences("a conversation")
        runner.chat_format  # noqa: B018 -- a file without a template fails here
        self.messages: list[dict] = check_messages(list(messages)) if messages else []
        if system is not None:
            self.set_system(system)
        self.cache = PrefixCache(1)
        #: Prompt tokens each turn fed to the model (the rest came from the cache).
        self.prefilled: list[int] = []

    def set_system(self, text: str) -> None:
        """Replace the system prompt (or add one at the start)."""
        check_messages([{"role": "system", "content": text}])
        self.messages = [{"role": "system", "content": text}] + [m for m in self.messages if m["role"] != "system"]

    def reset(self) -> None:
        """Forget the turns (the system prompt stays) and the cache."""
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.cache.clear()
        self.prefilled = []

    def stream(self, content: str, **options):
        """The reply to ``content`` piece by piece (a ``TextStream``); the turn is kept when it ends."""
        messages = self.messages + check_messages([{"role": "user", "content": content}])
        inner = self.runner.chat_stream(messages, cache=self.cache, **options)

        def pieces():
            yield from inner
            result = inner.result
            self.messages = messages + [{"role": "assistant", "content": result.text}]
            self.prefilled.append(result.prompt_tokens - result.cached_tokens)

        return TextStream(pieces(), inner._holder)

    def send(self, content: str, **options):
        """Add a user message and return the reply (a ``GenerationResult``; ``.text`` is the reply)."""
        stream = self.stream(content, **options)
        for _ in stream:
            pass
        return stream.result

    # -- saving -------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the messages and the KV cache to ``path`` (atomically): ``Conversation.load`` continues
        from it in any process, with the same file, without prefilling the history again."""
        from llm_tflite.litert.flatbuffer import write_atomic

        runner = self.runner
        entries = self.cache.entries
        header = {"format": 1, "model_sha256": runner.metadata.get("sha256"), "messages": self.messages,
                  "tokens": [], "caches": []}
        blobs = []
        if entries:
            sequence, tokens = entries[-1]
            position = sequence.position
            header["tokens"] = [int(t) for t in tokens[:position]]
            for name, array in runner.engine.read_state(sequence.caches).items():
                axis = _position_axis(runner, name)  # a ring (a local layer's) holds fewer slots than positions
                used = np.ascontiguousarray(np.take(array, range(min(position, array.shape[axis])), axis=axis))
                header["caches"].append({"name": name, "shape": list(used.shape), "dtype": str(used.dtype)})
                blobs.append(used.tobytes())
        text = json.dumps(header).encode("utf-8")
        body = CONVERSATION_MAGIC + struct.pack("<I", len(text)) + text + b"".join(blobs)
        write_atomic(os.fspath(path), body + hashlib.sha256(body).digest())

    @classmethod
    def load(cls, runner, path) -> "Conversation":
        """A conversation saved by ``save`` from the same model file; ``ConversationFileError`` if the
        file is damaged or was saved from another model."""
        where = repr(os.fspath(path))
        try:
            size = os.path.getsize(path)
            expected_max = 64 + MAX_HEADER_BYTES + sum(
                int(np.prod(shape)) * dtype.itemsize for shape, dtype in runner.engine.cache_specs.values())
            if size > expected_max:
                raise ConversationFileError(f"{where} is {size} bytes, more than a conversation of this model holds")
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConversationFileError(f"cannot read the conversation {where}: {e}") from e
        except AttributeError:
            raise InvalidArgumentError("saved conversations need a prefill_decode file on the interpreter backend") from None
        try:
            return cls._parse(runner, data, where)
        except (ConversationFileError, InvalidArgumentError):
            raise
        except Exception as e:  # RecursionError from a nested header, a wrong type anywhere: damaged
            raise ConversationFileError(f"{where} is damaged: {type(e).__name__}: {str(e)[:200]}") from None

    @classmethod
    def _parse(cls, runner, data: bytes, where: str) -> "Conversation":
        body, digest = data[:-32], data[-32:]
        if not data.startswith(CONVERSATION_MAGIC) or len(data) < len(CONVERSATION_MAGIC) + 36:
            raise ConversationFileError(f"{where} is not a saved llm-tflite conversation")
        if hashlib.sha256(body).digest() != digest:
            raise ConversationFileError(f"{where} is damaged (its checksum does not match); save it again")
        at = len(CONVERSATION_MAGIC)
        (length,) = struct.unpack("<I", body[at:at + 4])
        if length > min(MAX_HEADER_BYTES, len(body) - at - 4):
            raise ConversationFileError(f"{where} has a header longer than the file")
        try:
            header = json.loads(body[at + 4:at + 4 + length].decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ConversationFileError(f"{where} has a damaged header: {e}") from e
        if not isinstance(header, dict) or header.get("format") != 1:
            raise ConversationFileError(f"{where} is in an unknown conversation format")
        model_sha = runner.metadata.get("sha256")
        if not model_sha or header.get("model_sha256") != model_sha:
            raise ConversationFileError(f"{where} was saved from another model file (or one without a checksum); "
                                        "load it with the file it was saved from")
        messages = header.get("messages") or []
        if not isinstance(messages, list):
            raise ConversationFileError(f"{where} holds invalid messages")
        try:
            conversation = cls(runner, messages)
        except InvalidArgumentError as e:
            raise ConversationFileError(f"{where} holds invalid messages: {e}") from e
        tokens = header.get("tokens")
        if not (isinstance(tokens, list) and all(type(t) is int and 0 <= t < runner.vocab_size for t in tokens)
                and len(tokens) < runner.context_length):
            raise ConversationFileError(f"{where} holds invalid tokens")
        caches = header.get("caches")
        if not tokens:
            return conversation
        specs = runner.engine.cache_specs
        if not (isinstance(caches, list) and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in caches)
                and sorted(c["name"] for c in caches) == sorted(specs)):
            raise ConversationFileError(f"{where} does not hold this model's caches")
        sequence = runner.sequence()
        offset, arrays = at + 4 + length, {}
        for cache in caches:
            name = cache["name"]
            shape, dtype = specs[name]
            want = list(shape)
            axis = _position_axis(runner, name)
            want[axis] = min(len(tokens), shape[axis])
            if cache.get("shape") != want or cache.get("dtype") != str(dtype):
                raise ConversationFileError(f"{where}: cache {name!r} is not of this model's shape")
            nbytes = int(np.prod(want)) * dtype.itemsize
            if offset + nbytes > len(body):
                raise ConversationFileError(f"{where} is truncated")
            used = np.frombuffer(body, dtype, int(np.prod(want)), offset).reshape(want)
            if not np.isfinite(used).all():
                raise ConversationFileError(f"{where}: cache {name!r} holds values that are not finite")
            full = np.zeros(shape, dtype)
            index = [slice(None)] * len(shape)
            index[axis] = slice(0, want[axis])
            full[tuple(index)] = used
            arrays[name] = full
            offset += nbytes
        if offset != len(body):
            raise ConversationFileError(f"{where} has {len(body) - offset} bytes more than its caches")
        # the saved slots were written up to a padded chunk past the tokens (a ring's can_rewind_to)
        engine = runner.engine
        longest = max([1, *engine.prefill_lengths, *engine.score_lengths, *engine.prompt_lengths])
        engine.write_state(sequence.caches, arrays, written=min(runner.context_length, len(tokens) + longest - 1))
        sequence.position = len(tokens)
        conversation.cache.put(sequence, tokens)
        return conversation


def _position_axis(runner, cache_name: str) -> int:
    """The axis of a cache that runs over positions (``llm_tflite.families.ops`` layouts)."""
    return runner.engine.position_axes[cache_name]
