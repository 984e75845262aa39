"""``llm-tflite generate`` and ``llm-tflite bench``: running files."""

from __future__ import annotations

import dataclasses
import sys

from llm_tflite.cli.common import add_json, print_json
from llm_tflite.console import logger


def _sampler_settings(args) -> dict:
    from llm_tflite.runtime import sampling

    return {name: getattr(args, name) for name in sampling.SETTINGS if getattr(args, name, None) is not None}


def _filter(args):
    if args.filter_words:
        from llm_tflite.runtime.filters import ProfanityFilter, load_wordlist

        return ProfanityFilter(load_wordlist(args.filter_words))
    return args.filter


def cmd_generate(args) -> int:
    from llm_tflite.runtime.runner import InterpreterRunner

    runner = InterpreterRunner(args.file, num_threads=args.threads, backend=args.backend)
    kwargs = dict(seed=args.seed, stop=args.stop, context_overflow=args.context_overflow, filter=_filter(args),
                  **_sampler_settings(args))
    if args.json:
        result = runner.complete(args.prompt, args.max_new_tokens, args.sampler, **kwargs)
        print_json({"file": args.file, "prompt": args.prompt, **dataclasses.asdict(result)})
        return 0
    stream = runner.stream(args.prompt, args.max_new_tokens, args.sampler, **kwargs)
    if args.stream:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print(args.prompt + "".join(stream))
    if stream.result.finish_reason == "filtered":
        logger.warning("stopped: the filter found %r", stream.result.filtered)
    return 0


def cmd_autocomplete(args) -> int:
    from llm_tflite.runtime.runner import InterpreterRunner

    runner = InterpreterRunner(args.file, num_threads=args.threads, backend=args.backend)
    result = runner.autocomplete(args.text, window_words=args.window_words, max_new_tokens=args.max_new_tokens,
                                 sampler=args.sampler, seed=args.seed, filter=False if args.no_filter else _filter(args)
                                 or True, context_overflow=args.context_overflow, stop=args.stop,
                                 **_sampler_settings(args))
    if args.json:
        print_json(dataclasses.asdict(result))
    elif result.suggestion is not None:
        print(result.suggestion)
    else:
        print(f"no suggestion ({result.reason})", file=sys.stderr)
    return 0


CHAT_HELP = """commands: /reset (forget the turns), /system TEXT (set the system prompt), /save FILE,
/load FILE (the conversation with its KV cache), /quit (or Ctrl+D)"""


def _chat_turn(conversation, text: str, kwargs: dict, stream: bool) -> None:
    reply = conversation.stream(text, **kwargs)
    if stream:
        for piece in reply:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print("".join(reply))
    sys.stdout.flush()


def cmd_chat(args) -> int:
    from llm_tflite.errors import LLMTFLiteError
    from llm_tflite.runtime.chat import Conversation
    from llm_tflite.runtime.runner import InterpreterRunner

    runner = InterpreterRunner(args.file, num_threads=args.threads, backend=args.backend)
    conversation = runner.conversation(system=args.system)
    if args.load:
        conversation = Conversation.load(runner, args.load)
    kwargs = dict(seed=args.seed, stop=args.stop, filter=_filter(args), max_new_tokens=args.max_new_tokens,
                  sampler=args.sampler, json_schema=_json_schema(args), **_sampler_settings(args))
    if args.message is not None:  # one shot, for scripts
        for message in args.message:
            if args.json:
                result = conversation.send(message, **kwargs)
                print_json({"reply": result.text, "finish_reason": result.finish_reason,
                            "prompt_tokens": result.prompt_tokens, "cached_tokens": result.cached_tokens,
                            "completion_tokens": result.completion_tokens})
            else:
                _chat_turn(conversation, message, kwargs, args.stream)
        if args.save:
            conversation.save(args.save)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.file}; {CHAT_HELP}", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        command, _, rest = text.partition(" ")
        try:
            if command == "/quit":
                break
            if command == "/reset":
                conversation.reset()
            elif command == "/system":
                conversation.set_system(rest)
                conversation.cache.clear()
            elif command == "/save" and rest:
                conversation.save(rest)
                print(f"saved to {rest}", file=sys.stderr)
            elif command == "/load" and rest:
                conversation = Conversation.load(runner, rest)
                print(f"loaded {rest}: {len(conversation.messages)} messages", file=sys.stderr)
            elif command.startswith("/"):
                print(CHAT_HELP, file=sys.stderr)
            elif text.strip():
                _chat_turn(conversation, text, kwargs, args.stream or interactive)
        except LLMTFLiteError as e:  # a bad command or turn: say so and go on
            print(f"error: {e}", file=sys.stderr)
    if args.save:
        conversation.save(args.save)
    return 0


def _json_schema(args):
    if not args.json_schema:
        return None
    if args.json_schema == "object":
        return {"type": "object"}
    from llm_tflite.errors import InvalidArgumentError

    try:
        with open(args.json_schema, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read the JSON schema {args.json_schema!r}: {e}") from e


def _add_generation_options(p, *, default_sampler, default_max_new_tokens, filter_default: str) -> None:
    from llm_tflite.runtime import sampling
    from llm_tflite.runtime.engine import BACKENDS
    from llm_tflite.runtime.runner import CONTEXT_OVERFLOW

    p.add_argument("--max-new-tokens", type=int, default=default_max_new_tokens,
                   help="most tokens to generate (stops earlier at the end token or a stop string)"
                   + ("" if default_max_new_tokens else " (default: 64, or what the context still holds)"))
    p.add_argument("--sampler", default=default_sampler, choices=sampler_names(),
                   help="how tokens are chosen" + ("" if default_sampler else
                                                    " (default: greedy, or a generate-mode file's own)"))
    p.add_argument("--seed", type=int, help="seed of random sampling; the same seed gives the same text")
    p.add_argument("--temperature", type=float, help=f"divides the logits before sampling (default: {sampling.TEMPERATURE})")
    p.add_argument("--top-k", type=int, help=f"keep the k most likely tokens (default: {sampling.TOP_K} for top_k; "
                   f"{sampling.CONTRASTIVE_K} candidates for contrastive)")
    p.add_argument("--top-p", type=float, help=f"keep the most likely tokens whose probability reaches p "
                   f"(default: {sampling.TOP_P} for top_p)")
    p.add_argument("--min-p", type=float, help="keep tokens at least this fraction as likely as the best")
    p.add_argument("--repetition-penalty", type=float, help="HF's repetition penalty (default: 1.0, off)")
    p.add_argument("--frequency-penalty", type=float, help="OpenAI's frequency penalty (default: 0, off)")
    p.add_argument("--presence-penalty", type=float, help="OpenAI's presence penalty (default: 0, off)")
    p.add_argument("--num-beams", type=int, help=f"beam: beams kept (default: {sampling.NUM_BEAMS})")
    p.add_argument("--length-penalty", type=float,
                   help=f"beam: divide scores by length**penalty (default: {sampling.LENGTH_PENALTY}, KerasHub's)")
    p.add_argument("--penalty-alpha", type=float, help=f"contrastive: weight of the degeneration penalty "
                   f"(default: {sampling.PENALTY_ALPHA})")
    p.add_argument("--stop", action="append", help="stop before this text (repeatable); it is not printed")
    p.add_argument("--context-overflow", choices=CONTEXT_OVERFLOW, default=None if filter_default == "off" else
                   "truncate", help="when prompt + new tokens exceed the context: error, or truncate (keep the most "
                   "recent tokens)" + (" (default: error)" if filter_default == "off" else ""))
    p.add_argument("--filter", action="store_const", const=True, default=None,
                   help=f"reject prompts and output with a listed word (default: {filter_default})")
    p.add_argument("--filter-words", help="a word list file (one per line, # comments) for the filter, "
                   "instead of the built-in list")
    p.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    p.add_argument("--backend", default="interpreter", choices=BACKENDS,
                   help="interpreter: our loop (every option); litert-lm: a .litertlm bundle in LiteRT-LM's engine "
                   "(greedy/random/top_k/top_p; needs llm-tflite[litertlm])")


def sampler_names() -> list[str]:
    from llm_tflite.plugins.registry import samplers
    from llm_tflite.runtime import sampling

    return list(sampling.SAMPLERS + sampling.SEARCHES) + sorted(samplers())


def cmd_bench(args) -> int:
    from llm_tflite.cli.common import size
    from llm_tflite.evaluation.bench import bench_file, bench_keras

    result = bench_file(args.file, args.prompt_tokens, args.new_tokens, args.runs, args.threads)
    if args.reference:
        result.update(bench_keras(args.reference, result["prompt_tokens"], result["new_tokens"], args.runs))
        result["decode_speedup_vs_keras"] = result["decode_tokens_per_s"] / result["keras_generate_tokens_per_s"]
    if args.json:
        print_json(result)
        return 0
    early, late, read = result["decode_early"], result["decode_late"], result["bytes_read_per_token"]
    print(f"{result['file']} ({size(result['file_bytes'])}, {result['quantization']}, context "
          f"{result['context_length']}, {result['threads']} threads): loaded in {result['load_s']:.2f} s, peak RSS {size(result['peak_rss_bytes'])}")
    for length, figures in result["prefill"].items():
        print(f"  prompt {length:>4} tokens: first token after {figures['time_to_first_token_s'] * 1000:.1f} ms "
              f"(prefill {figures['tokens_per_s']:.0f} tokens/s)")
    for name, figures in (("early", early), ("late", late)):
        print(f"  decode at positions {figures['positions'][0]}-{figures['positions'][1]}: {figures['median']:.1f} "
              f"tokens/s (min {figures['min']:.1f}, max {figures['max']:.1f})")
    print(f"  plain generations (runner.complete, same process, rounds between these): "
          f"{result['generate_decode_tokens_per_s']:.1f} tokens/s; this loop / generate "
          f"{result['decode_over_generate']:.2f}")
    bandwidth = result["read_bandwidth"]
    print(f"  read bandwidth: {bandwidth['max_bytes_per_s'] / 1e9:.1f} GB/s, the highest of "
          f"{len(bandwidth['samples_bytes_per_s'])} samples taken before, between and after the runs (median "
          f"{bandwidth['median_bytes_per_s'] / 1e9:.1f}, spread {bandwidth['spread']:.0%})")
    for name, bound, fraction, read in (
            ("early", result["decode_bound_tokens_per_s"], result["decode_fraction_of_bound"], read),
            ("late", late["bound_tokens_per_s"], late["fraction_of_bound"], late["bytes_read_per_token"])):
        verdict = (f"measured {fraction:.0%}: above the bound, so a mis-measurement (the bandwidth samples or the "
                   "bytes read), not a result" if name in result["bound_exceeded"] else f"reached {fraction:.0%}")
        print(f"  bound {name}: {bound:.1f} tokens/s = {bandwidth['max_bytes_per_s'] / 1e9:.1f} GB/s / "
              f"{size(read['total'])} per token (weights {size(read['weights'])} + KV cache read "
              f"{size(read['kv_cache'])}); {verdict}")
    engine = result.get("litert_lm")
    if engine:
        print(f"LiteRT-LM engine, same file: prefill {engine['prefill_tokens_per_s']:.0f} tokens/s "
              f"({engine['prompt_tokens']} tokens), decode {engine['decode_tokens_per_s']:.1f} tokens/s "
              f"(ours / LiteRT-LM: {result['decode_tokens_per_s'] / engine['decode_tokens_per_s']:.2f}x)")
    if args.reference:
        print(f"Keras generate (same process): {result['keras_generate_tokens_per_s']:.1f} tokens/s; "
              f"decode speed-up {result['decode_speedup_vs_keras']:.2f}x")
    return 0


def add_commands(cli) -> None:
    p = cli.add_parser("generate", help="continue a prompt with a .tflite file")
    p.add_argument("file", help="the .tflite file (llm-tflite convert writes one) or a .litertlm bundle")
    p.add_argument("prompt", help="the text to continue")
    _add_generation_options(p, default_sampler=None, default_max_new_tokens=None, filter_default="off")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    add_json(p)
    p.set_defaults(func=cmd_generate, context_overflow="error")

    p = cli.add_parser("autocomplete", help="a suggestion to continue TEXT, as the autocomplete app makes it "
                       "(last N words, profanity filter, retries)")
    p.add_argument("file", help="the .tflite file (llm-tflite convert writes one) or a .litertlm bundle")
    p.add_argument("text", help="what the user has typed")
    p.add_argument("--window-words", type=int, default=20, help="words of TEXT the model sees (the app's slider: 5-50)")
    _add_generation_options(p, default_sampler="top_k", default_max_new_tokens=32, filter_default="on")
    p.add_argument("--no-filter", action="store_true", help="turn the profanity filter off")
    add_json(p)
    p.set_defaults(func=cmd_autocomplete)

    p = cli.add_parser("chat", help="chat with an instruction-tuned file in the terminal (its chat template, "
                       "the KV cache kept between turns)", description=CHAT_HELP)
    p.add_argument("file", help="a .tflite file with a chat template (Gemma 3, Qwen 3, Llama 3.x, or "
                   "convert --chat-template) or a .litertlm bundle of one")
    p.add_argument("--message", action="append", help="send this message and print the reply, no prompt "
                   "(repeatable: one turn each)")
    p.add_argument("--system", help="the system prompt")
    p.add_argument("--save", help="write the conversation (messages and KV cache) here at the end")
    p.add_argument("--load", help="continue a conversation saved with --save or /save")
    p.add_argument("--json-schema", help="constrain replies to JSON: 'object', or a JSON schema file")
    _add_generation_options(p, default_sampler="greedy", default_max_new_tokens=None, filter_default="off")
    p.add_argument("--stream", action="store_true", help="print replies as they are generated (always in a terminal)")
    add_json(p)
    p.set_defaults(func=cmd_chat)

    from llm_tflite.cli.common import int_list
    from llm_tflite.evaluation.bench import NEW_TOKENS, PROMPT_LENGTHS

    p = cli.add_parser("bench", help="prefill/decode speed of a prefill_decode file (a bundle: ours and LiteRT-LM's "
                       "engine side by side), optionally against Keras")
    p.add_argument("file", help="a prefill_decode .tflite file or a .litertlm bundle")
    p.add_argument("--reference", help="a model to compare with (preset name or directory), run in this process")
    p.add_argument("--prompt-tokens", type=int_list, default=list(PROMPT_LENGTHS),
                   help=f"prompt lengths for time to first token and prefill speed (default: "
                   f"{','.join(map(str, PROMPT_LENGTHS))}); decode runs after the shortest")
    p.add_argument("--new-tokens", type=int, default=NEW_TOKENS,
                   help="greedy decode steps measured after the prompt and at the end of the context")
    p.add_argument("--runs", type=int, default=3, help="repetitions; the median is reported")
    p.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    add_json(p)
    p.set_defaults(func=cmd_bench)
