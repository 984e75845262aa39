"""Chat: the model's own template (parity with Hugging Face ``transformers`` and LiteRT-LM's engine),
conversations that keep their KV cache between turns (saved and restored across processes),
JSON-constrained output, and hostile templates and saved caches ending in typed errors."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from llm_tflite import Converter, InterpreterRunner, read_metadata
from llm_tflite.errors import ChatTemplateError, ContextLengthError, ConversationFileError, InvalidArgumentError
from llm_tflite.runtime.chat import Conversation
from llm_tflite.testing import write_hf_checkpoint
from llm_tflite.tokenizers.chat_template import ChatTemplate

#: Five conversations: system prompts or none, several turns, text that tokenizers split in odd places.
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Good morning"},
     {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "And good night?"}],
    [{"role": "user", "content": "  spaces around  "}, {"role": "assistant", "content": "Trimmed?"},
     {"role": "user", "content": "Code:\n```py\nprint(1)\n```"}, {"role": "assistant", "content": "OK."},
     {"role": "user", "content": "你好，世界 🙂"}],
    [{"role": "system", "content": "Be kind.\nTwo lines."}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
     {"role": "user", "content": "e"}],
]


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
    """Tiny random instruction-style checkpoints (their tokenizer_config.json carries the published chat
    template), converted: ``{family: (checkpoint directory, .tflite path)}``."""
    root = tmp_path_factory.mktemp("chat")
    files = {}
    for family in ("qwen3", "gemma3", "llama3"):
        directory = write_hf_checkpoint(root / family, family)
        path = root / f"{family}.tflite"
        # LiteRT-LM runs them too: no ring caches (it takes the shortest cache as its token limit)
        Converter(context_length=512, prefill_lengths=(8, 32), ring_caches=False).convert(directory, str(path))
        files[family] = (directory, str(path))
    return files


def _transformers_render(directory, messages):
    """The prompt text and ids Hugging Face ``transformers`` makes of ``messages`` from the checkpoint."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         date_string="02 Dec 2026")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text, list(ids)


@pytest.mark.parametrize("family", ["qwen3", "llama3", "gemma3"])
def test_chat_prompt_is_what_transformers_builds(chat_files, family):
    directory, path = chat_files[family]
    runner = InterpreterRunner(path)
    for messages in CONVERSATIONS:
        text = runner.chat_prompt(messages, date_string="02 Dec 2026")
        ids = runner.chat_format.encode(text)
        if family == "gemma3":
            # transformers reads Gemma's tokenizer.model as a BPE model (Gemma's own is one); the test
            # checkpoint's is a small unigram model, so its ids are checked against sentencepiece itself
            from transformers.utils.chat_template_utils import render_jinja_template

            with open(os.path.join(directory, "tokenizer_config.json"), encoding="utf-8") as f:
                config = json.load(f)
            rendered, _ = render_jinja_template([messages], chat_template=config["chat_template"],
                                                add_generation_prompt=True, bos_token="<bos>", eos_token="<eos>")
            assert text == rendered[0]
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(directory, "tokenizer.model"))
            assert text.startswith("<bos>") and text.count("<bos>") == 1
            assert ids == [sp.bos_id()] + sp.encode(text[len("<bos>"):])
        else:
            assert (text, ids) == _transformers_render(directory, messages)


def test_chat_stops_at_the_end_of_turn_and_records_the_template(chat_files):
    _, path = chat_files["qwen3"]
    runner = InterpreterRunner(path)
    chat = runner.metadata["chat"]
    assert chat["template"].startswith("{%- if tools %}")
    im_end = runner.tokenizer.encode("<|im_end|>")
    assert len(im_end) == 1 and im_end[0] in chat["stop_token_ids"]
    messages = CONVERSATIONS[1]
    prompt_ids = runner.chat_format.encode(runner.chat_prompt(messages))
    free = list(runner.generate_ids(prompt_ids, 40, stop_token_ids=[]))
    # a reply that reaches <|im_end|> ends there (ask for the reply that token makes: forced by stop_token_ids)
    reply = runner.chat(messages, 40, stop_token_ids=[free[3]])
    assert reply.finish_reason == "stop" and reply.token_ids == free[:free.index(free[3])]
    assert runner.chat(messages, 40).token_ids == free[:next((i for i, t in enumerate(free)
                                                               if t in chat["stop_token_ids"]), 40)]


def test_a_file_without_a_template_says_how_to_get_one(tiny_tflite):
    runner = InterpreterRunner(tiny_tflite)
    assert "chat" not in runner.metadata
    with pytest.raises(InvalidArgumentError, match="--chat-template"):
        runner.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(InvalidArgumentError, match="--chat-template"):
        runner.conversation()


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_litert_lm_engine_builds_the_same_prompt_and_greedy_reply(chat_files, family, tmp_path):
    pytest.importorskip("litert_lm")
    from llm_tflite.export.bundle import build_bundle
    from llm_tflite.runtime.litertlm_backend import import_litert_lm

    _, path = chat_files[family]
    bundle = build_bundle(path, tmp_path / f"{family}.litertlm")
    runner = InterpreterRunner(path)
    litert_lm = import_litert_lm()
    engine = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU(thread_count=2))
    for messages in CONVERSATIONS[1:4]:
        ours = runner.chat(messages, 12)
        conversation = engine.create_conversation(messages=messages[:-1], max_output_tokens=12)
        # LiteRT-LM writes the start token itself rather than as text in the prompt
        expected = runner.chat_prompt(messages).removeprefix(runner.metadata["chat"]["bos_token"] or "")
        assert conversation.render_message_to_string(messages[-1]) == expected
        reply = conversation.send_message(messages[-1])
        # the same tokens: their text is the tokenizer's decoding of our reply's ids (SentencePiece drops
        # the leading space of a text, which our streamed reply keeps)
        assert "".join(part["text"] for part in reply["content"]) == runner.decode(ours.token_ids)
        assert len(ours.token_ids) == 12
    # our runner on the bundle, in LiteRT-LM's engine: completions run (the engine stops at the bundle's
    # end-of-turn tokens too), chat goes through the engine's Conversation API as above
    in_engine = InterpreterRunner(bundle, backend="litert-lm")
    assert in_engine.complete("Hello", 4, "greedy").prompt_tokens > 0
    with pytest.raises(InvalidArgumentError, match="Conversation API"):
        in_engine.chat(CONVERSATIONS[0], 4)


def test_conversation_prefills_only_new_tokens_and_continues_in_a_new_process(chat_files, tmp_path):
    _, path = chat_files["qwen3"]
    runner = InterpreterRunner(path)
    conversation = runner.conversation(system="You are a test.")
    fed_before = []
    for turn in range(10):
        messages_before = list(conversation.messages)
        cached = conversation.cache.entries[-1][1] if conversation.cache.entries else []
        result = conversation.send(f"Question number {turn}?", max_new_tokens=6)
        # the reply is the one a fresh prefill of the whole history gives
        fresh = runner.chat(messages_before + [{"role": "user", "content": f"Question number {turn}?"}], 6)
        assert result.token_ids == fresh.token_ids and result.text == fresh.text
        prompt_ids = runner.chat_format.encode(runner.chat_prompt(conversation.messages[:-1]))
        shared = next((i for i, (a, b) in enumerate(zip(cached, prompt_ids)) if a != b), min(len(cached), len(prompt_ids)))
        assert result.prompt_tokens == len(prompt_ids) and result.cached_tokens == shared
        fed_before.append(conversation.prefilled[-1])
        assert conversation.prefilled[-1] == len(prompt_ids) - shared
        if turn:
            assert shared > 0 and conversation.prefilled[-1] < len(prompt_ids) / 2
        if turn == 4:
            saved = tmp_path / "chat.llmchat"
            conversation.save(saved)
    assert len(conversation.messages) == 21
    # turns 5-9 again, in a new process, from the saved file
    script = f"""
import json, sys
from llm_tflite import InterpreterRunner
from llm_tflite.runtime.chat import Conversation
runner = InterpreterRunner({path!r})
conversation = Conversation.load(runner, {str(saved)!r})
out = []
for turn in range(5, 10):
    result = conversation.send(f"Question number {{turn}}?", max_new_tokens=6)
    out.append([result.token_ids, result.cached_tokens, conversation.prefilled[-1]])
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    again = json.loads(done.stdout.strip().splitlines()[-1])
    replies = [m["content"] for m in conversation.messages if m["role"] == "assistant"][5:]
    assert [runner.decode(ids) for ids, _, _ in again] == replies
    assert [fed for _, _, fed in again] == fed_before[5:]  # the restored cache spares the same prefill


def test_ring_cache_conversations_reply_as_a_fresh_prefill_and_save(chat_files, tmp_path):
    """Gemma 3's local layers keeping 56 slots (ring caches): a conversation longer than that, its
    cached turns and a saved and loaded copy reply as a fresh prefill of the history does; a prompt
    that would move a ring's sequence back more than one token is not served from the cache."""
    from llm_tflite.runtime.chat import PrefixCache

    directory, _ = chat_files["gemma3"]
    path = tmp_path / "ring.tflite"
    Converter(context_length=512, prefill_lengths=(8, 32)).convert(directory, str(path))
    runner = InterpreterRunner(path)
    assert runner.engine.has_rings and read_metadata(path)["kv_cache"]["lengths"][0] == 56
    conversation = runner.conversation()
    for turn in range(4):
        question = f"Question number {turn}, asked at some length so that the history passes the window?"
        before = list(conversation.messages)
        result = conversation.send(question, max_new_tokens=8)
        assert result.token_ids == runner.chat(before + [{"role": "user", "content": question}], 8).token_ids
    assert result.cached_tokens > 56
    saved = tmp_path / "ring.llmchat"
    conversation.save(saved)
    loaded = Conversation.load(runner, saved)
    history = list(conversation.messages) + [{"role": "user", "content": "And one more?"}]
    fresh = runner.chat(history, 8).token_ids
    one_more = [c.send("And one more?", max_new_tokens=8).token_ids for c in (conversation, loaded)]
    assert one_more[0] == one_more[1] == fresh
    # 70 tokens: 69 through prefill_32, prefill_32 and a prefill_8 holding 5 (slots up to 71 written), then
    # decode; the rings keep 56 = 24 + 32 slots: back to 71 - 32 = 39 is right, further is not
    sequence = runner.sequence()
    sequence.feed_last(list(range(100, 170)))
    assert sequence.written == 72 and runner.engine.ring_slack == 32
    assert sequence.can_rewind_to(39) and not sequence.can_rewind_to(38)
    cache = PrefixCache(1)
    cache.put(sequence, list(range(100, 170)))
    assert cache.take(list(range(100, 137)) + [5, 6]) is None  # 37 shared
    cache.put(sequence, list(range(100, 170)))
    reused = cache.take(list(range(100, 145)) + [5, 6])
    assert reused is sequence and reused.position == 45
    reference = runner.sequence()
    reference.feed_last(list(range(100, 145)))
    np.testing.assert_allclose(reused.feed_last([5, 6]), reference.feed_last([5, 6]), rtol=0, atol=1e-5)


def test_conversation_drops_the_oldest_turns_when_the_history_outgrows_the_context(chat_files):
    _, path = chat_files["qwen3"]
    runner = InterpreterRunner(path)  # context 512
    conversation = runner.conversation(system="Keep me.")
    for turn in range(12):
        result = conversation.send(f"Tell me more about item number {turn} please. " * 4, max_new_tokens=16)
        assert result.prompt_tokens + 16 <= runner.context_length
    assert "Keep me." in result.prompt and "item number 0 " not in result.prompt
    assert "item number 11 " in result.prompt and len(conversation.messages) == 25
    with pytest.raises(ContextLengthError, match="last message"):
        conversation.send("word " * 800, max_new_tokens=16)


def _saved_conversation(chat_files, tmp_path):
    """``(file path, runner, saved conversation path)``: one turn on the Qwen 3 file, saved."""
    path = chat_files["qwen3"][1]
    runner = InterpreterRunner(path)
    conversation = runner.conversation()
    conversation.send("hello", max_new_tokens=4)
    good = tmp_path / "good.llmchat"
    conversation.save(good)
    return path, runner, good


def test_saved_conversations_that_are_damaged_or_foreign_are_refused(chat_files, tmp_path):
    path, runner, good = _saved_conversation(chat_files, tmp_path)
    data = good.read_bytes()
    variants = {
        "truncated": data[:-100], "empty": b"", "garbage": os.urandom(4096), "flipped": data[:200] + bytes([data[200] ^ 1]) + data[201:],
    }
    import hashlib
    import struct

    from llm_tflite.runtime.chat import CONVERSATION_MAGIC

    def sealed(header: dict, blobs: bytes = b"") -> bytes:
        text = json.dumps(header).encode()
        body = CONVERSATION_MAGIC + struct.pack("<I", len(text)) + text + blobs
        return body + hashlib.sha256(body).digest()

    at = len(CONVERSATION_MAGIC)
    (length,) = struct.unpack("<I", data[at:at + 4])
    header = json.loads(data[at + 4:at + 4 + length])
    blobs = data[at + 4 + length:-32]
    variants["other model"] = sealed({**header, "model_sha256": "0" * 64}, blobs)
    variants["wrong shape"] = sealed({**header, "caches": [{**c, "shape": [1, 1, 1, 1]} for c in header["caches"]]}, blobs)
    variants["bad tokens"] = sealed({**header, "tokens": [-1] * len(header["tokens"])}, blobs)
    variants["short blobs"] = sealed(header, blobs[:-8])
    variants["nan cache"] = sealed(header, np.full(len(blobs) // 4, np.nan, np.float32).tobytes())
    variants["huge header length"] = (lambda b: b + hashlib.sha256(b).digest())(
        CONVERSATION_MAGIC + struct.pack("<I", 2**31) + b"{}")
    variants["bad messages"] = sealed({**header, "messages": [{"role": "wizard", "content": 1}]}, blobs)
    variants["messages not a list"] = sealed({**header, "messages": 5}, blobs)
    variants["caches not dicts"] = sealed({**header, "caches": [1] * len(header["caches"])}, blobs)
    variants["no model checksum"] = sealed({**header, "model_sha256": None}, blobs)
    nested = b"[" * 100_000 + b"]" * 100_000
    variants["nested header"] = (lambda b: b + hashlib.sha256(b).digest())(
        CONVERSATION_MAGIC + struct.pack("<I", len(nested)) + nested)
    for name, content in variants.items():
        bad = tmp_path / f"{name}.llmchat"
        bad.write_bytes(content)
        with pytest.raises(ConversationFileError):
            Conversation.load(runner, bad)
    Conversation.load(runner, good)  # the good one still loads


def test_saved_conversation_loading_never_crashes_the_process(chat_files, tmp_path):
    """Random damage to a saved file, loaded in a subprocess: a typed error every time, never a crash."""
    path, runner, good = _saved_conversation(chat_files, tmp_path)
    script = f"""
import os, random
from llm_tflite import InterpreterRunner
from llm_tflite.errors import ConversationFileError
from llm_tflite.runtime.chat import Conversation
runner = InterpreterRunner({path!r})
data = open({str(good)!r}, "rb").read()
rng = random.Random(0)
for i in range(40):
    damaged = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        damaged[rng.randrange(len(damaged))] = rng.randrange(256)
    cut = rng.choice([len(damaged), rng.randrange(len(damaged))])
    open("bad.llmchat", "wb").write(bytes(damaged[:cut]))
    try:
        Conversation.load(runner, "bad.llmchat")
    except ConversationFileError:
        pass
print("survived")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and "survived" in done.stdout, done.stderr[-2000:]


def test_prefix_cache_keeps_other_conversations_and_history_trims_with_few_renders():
    from llm_tflite.runtime.chat import PrefixCache, fit_messages

    class Seq:
        position = 0

        def can_rewind_to(self, position):  # full-length caches: any position
            return True

    cache = PrefixCache(2)
    mine, other = Seq(), Seq()
    cache.put(mine, [1, 2, 3, 4, 5, 6])
    cache.put(other, [1, 9, 9, 9, 9, 9])
    assert cache.take([1, 7, 7]) is None and len(cache.entries) == 2  # a shared start token steals nothing
    assert cache.take([1, 2, 3, 4, 5, 6, 7]) is mine and mine.position == 6
    assert cache.take([1, 9, 9, 9, 8]) is other and other.position == 4
    # 400 turns trimmed to what fits, in a handful of renders, whole turns, the system message kept
    messages = [{"role": "system", "content": "s"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(799)]
    calls = []

    def fits(candidate):
        calls.append(len(candidate))
        return len(candidate) <= 11

    kept = fit_messages(messages, fits)
    assert kept[0]["role"] == "system" and kept[1]["role"] == "user" and kept[-1] == messages[-1]
    assert len(kept) in (10, 11) and len(calls) <= 14


HOSTILE_TEMPLATES = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "huge repeat": "{{ 'a' * 1000000000 }}",
    "huge power": "{{ 10 ** 100000000 }}",
    "huge filter width": "{{ 'a'|center(1000000000) }}",
    "python internals": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ raise_exception.__globals__ }}{{ namespace.__init__.__globals__['os'] }}",
    "doubling string": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling recursion": "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('ab') }}",
    "huge output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "format width": "{{ '%999999999s' % 'a' }}",
    "replace blow-up": "{% set s = 'a' * 100000 %}{{ s|replace('a', 'a' * 100000) }}",
    "lazy list": "{{ range(100000)|map('center', 1000000)|join }}",
    "recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "syntax": "{% for %}",
    "string method width": '{{ "a".ljust(150000000) }}',
    "format filter width": '{{ "%150000000d"|format(1) }}',
    "str.format width": '{{ "{:>150000000}".format(1) }}',
    "join of big items": '{{ (["x" * 2000000] * 100)|join }}',
    "replace with empty": '{% set s = "a" * 1000000 %}{{ s.replace("", s) }}',
    "indent folded at compile time": '{{ "' + "\\n" * 100 + '"|indent(1500000, blank=True) }}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_hostile_templates_end_in_a_typed_error_within_a_second(name):
    import resource

    started, peak = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ChatTemplateError):
        ChatTemplate(HOSTILE_TEMPLATES[name]).render([{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 1.0
    # memory: never more than the render guard's limit beyond what the process had reached (KiB)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 300 * 1024


def test_a_hostile_template_in_a_file_fails_the_chat_not_the_process(tiny_gpt2_dir, tmp_path):
    path = tmp_path / "hostile.tflite"
    Converter(context_length=64, prefill_lengths=(8,), chat_template=HOSTILE_TEMPLATES["nested loops"]).convert(
        str(tiny_gpt2_dir), str(path))
    runner = InterpreterRunner(path)
    with pytest.raises(ChatTemplateError, match="ran past"):
        runner.chat([{"role": "user", "content": "hi"}])
    assert len(runner.complete("ROMEO:", 4).token_ids) == 4  # the runner goes on working
    with pytest.raises(ChatTemplateError):
        Converter(chat_template="{% for %}")
    with pytest.raises(Exception, match="cannot read the chat template file"):
        Converter(chat_template=str(tmp_path / "missing.jinja"))


def test_messages_are_checked_before_the_template_sees_them():
    template = ChatTemplate("{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}")
    assert template.render([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]) \
        == "user:ab;"
    for bad in ([], [{"role": "wizard", "content": "x"}], [{"role": "user", "content": 3}], ["hello"],
                [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]):
        with pytest.raises(InvalidArgumentError):
            template.render(bad)
    gemma = ChatTemplate(open(os.path.join(os.path.dirname(__file__), "..", "llm_tflite", "families", "chat_templates",
                                           "gemma3.jinja")).read())
    with pytest.raises(InvalidArgumentError, match="alternate"):  # the template's own raise_exception
        gemma.render([{"role": "assistant", "content": "first?"}])


JSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
                   "member": {"type": "boolean"},
                   "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3}},
    "required": ["name", "age", "member", "tags"], "additionalProperties": False,
}


@pytest.mark.slow
def test_json_schema_generations_always_parse_and_validate(chat_files):
    jsonschema = pytest.importorskip("jsonschema")
    _, path = chat_files["qwen3"]
    runner = InterpreterRunner(path)
    messages = [{"role": "user", "content": "Describe a person as JSON."}]
    finished = 0
    for seed in range(200):
        result = runner.chat(messages, 120, "random", seed=seed, temperature=1.0, json_schema=JSON_SCHEMA)
        assert result.finish_reason == "stop", (seed, result.text)
        jsonschema.validate(json.loads(result.text), JSON_SCHEMA)
        finished += 1
    assert finished == 200
    # any JSON object (OpenAI's json_object), and on plain completions too
    value = json.loads(runner.complete("x", 60, "greedy", json_schema={"type": "object", "maxProperties": 2,
                                                                     "additionalProperties": {"type": "integer"}}).text)
    assert isinstance(value, dict)
    with pytest.raises(InvalidArgumentError, match="json_schema"):
        runner.chat(messages, 8, json_schema="{not json")
    with pytest.raises(InvalidArgumentError, match="search"):
        runner.chat(messages, 8, "beam", json_schema=JSON_SCHEMA)


@pytest.fixture(scope="module")
def chat_server(chat_files):
    from llm_tflite.serve.app import Limits, create_app
    from llm_tflite.testing import ServerThread

    served = ServerThread(create_app(chat_files["qwen3"][1], limits=Limits(max_tokens=128)))
    yield served
    served.stop()


def test_openai_client_chats_with_the_server(chat_files, chat_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=chat_server.url + "/v1", api_key="unused")
    runner = InterpreterRunner(chat_files["qwen3"][1])
    messages = CONVERSATIONS[2]
    reply = client.chat.completions.create(model="qwen3", messages=messages, max_tokens=10, temperature=0)
    expected = runner.chat(messages, 10, "greedy")
    assert reply.choices[0].message.content == expected.text and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (expected.prompt_tokens, 10)
    # the client sends the history again with one more turn: only the new tokens are prefilled
    longer = messages + [{"role": "assistant", "content": reply.choices[0].message.content},
                         {"role": "user", "content": "Go on."}]
    again = client.chat.completions.create(model="qwen3", messages=longer, max_tokens=10, temperature=0)
    assert again.choices[0].message.content == runner.chat(longer, 10, "greedy").text
    assert again.usage.prompt_tokens_details.cached_tokens >= expected.prompt_tokens
    # seeded sampling, a stop string
    seeded = client.chat.completions.create(model="qwen3", messages=messages, max_tokens=12, temperature=0.8,
                                            top_p=0.9, seed=3)
    assert seeded.choices[0].message.content == runner.chat(messages, 12, "random", seed=3, temperature=0.8,
                                                            top_p=0.9).text


def test_openai_client_streams_and_gets_json_that_validates(chat_files, chat_server):
    openai = pytest.importorskip("openai")
    jsonschema = pytest.importorskip("jsonschema")
    client = openai.OpenAI(base_url=chat_server.url + "/v1", api_key="unused")
    runner = InterpreterRunner(chat_files["qwen3"][1])
    messages = CONVERSATIONS[1]
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model="qwen3", messages=messages, max_tokens=10, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == runner.chat(messages, 10, "greedy").text and finish == "length"
    assert usage.completion_tokens == 10
    for seed in range(3):
        reply = client.chat.completions.create(
            model="qwen3", messages=messages, max_tokens=120, temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": JSON_SCHEMA}})
        jsonschema.validate(json.loads(reply.choices[0].message.content), JSON_SCHEMA)
    reply = client.chat.completions.create(model="qwen3", messages=messages, max_tokens=120, temperature=0,
                                           response_format={"type": "json_object"})
    assert reply.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="qwen3", messages=[{"role": "wizard", "content": "x"}], max_tokens=4)
    with pytest.raises(openai.BadRequestError):  # streamed too: the status, not an event after a 200
        client.chat.completions.create(model="qwen3", messages=[{"role": "wizard", "content": "x"}], max_tokens=4,
                                       stream=True)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="qwen3", messages=messages, max_tokens=4,
                                       response_format={"type": "grammar"})


def test_chat_doc_examples_run(tmp_path):
    """docs/chat.md's Python examples, in order, as one script (the one that needs a running server is
    ``test_openai_client_chats_with_the_server``)."""
    import re

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "chat.md"), encoding="utf-8").read()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if not b.startswith("# a served file")]
    assert len(blocks) == 3
    out = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "True" in lines and any(line.endswith("from the cache") for line in lines)


def test_chat_command_one_shot_and_interactive(chat_files, tmp_path):
    _, path = chat_files["qwen3"]
    runner = InterpreterRunner(path)
    expected = runner.conversation(system="Be terse.")
    first, second = (expected.send(m, max_new_tokens=6).text for m in ("Hello!", "And then?"))
    command = [sys.executable, "-m", "llm_tflite", "chat", path, "--system", "Be terse.", "--max-new-tokens", "6"]
    done = subprocess.run(command + ["--message", "Hello!", "--message", "And then?", "--save", str(tmp_path / "c.llmchat")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [first, second]
    # interactive (stdin is not a terminal here): commands and turns, one per line
    script = f"/load {tmp_path / 'c.llmchat'}\nOne more?\n/reset\n/bogus\nHello!\n/quit\n"
    done = subprocess.run(command, input=script, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [expected.send("One more?", max_new_tokens=6).text, first]
    assert "loaded" in done.stderr and "/reset" in done.stderr  # the help after an unknown command
