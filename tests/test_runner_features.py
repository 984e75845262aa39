"""The runner as the autocomplete app needs it (issue 11): every option of docs/runner.md,
KerasHub's beam and contrastive search, stop strings, the profanity filter, autocomplete."""


import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_tflite import InterpreterRunner, hookimpl
from llm_tflite.errors import ContextLengthError, InvalidArgumentError, RuntimeFailure
from llm_tflite.runtime.autocomplete import window_text
from llm_tflite.runtime.filters import ProfanityFilter
from llm_tflite.runtime.sampling import Sampler, TokenSampler

PROMPT = "First Citizen:\nBefore we proceed"


@pytest.fixture(scope="module")
def runner(tiny_tflite):
    return InterpreterRunner(tiny_tflite)


# -- one test per option (docs/runner.md) -------------------------------------------
def test_max_new_tokens_and_finish_reasons(runner):
    result = runner.complete(PROMPT, max_new_tokens=7)
    assert result.completion_tokens == len(result.token_ids) == 7 and result.finish_reason == "length"
    assert result.prompt_tokens == len(runner.encode(PROMPT)) and result.prompt == PROMPT
    assert result.text == runner.decode(result.token_ids) == runner.generate(PROMPT, 7)


def test_stop_token_ids_end_generation(runner):
    free = runner.complete(PROMPT, max_new_tokens=12)
    stopper = free.token_ids[4]
    result = runner.complete(PROMPT, max_new_tokens=12, stop_token_ids=[stopper])
    assert result.token_ids == free.token_ids[: free.token_ids.index(stopper)] and result.finish_reason == "stop"


def test_stop_strings_are_cut_and_never_shown(runner):
    free = runner.generate(PROMPT, 30)
    stop = free[8:11]
    result = runner.complete(PROMPT, 30, stop=[stop, "never there"])
    assert result.text == free[: free.index(stop)] and result.finish_reason == "stop"
    assert "".join(runner.stream(PROMPT, 30, stop=stop)) == result.text


@pytest.mark.parametrize("name", ["random", "top_k", "top_p"])
def test_sampler_names_and_seeds(runner, name):
    first = runner.generate(PROMPT, 16, name, seed=3)
    assert first == runner.generate(PROMPT, 16, name, seed=3)
    assert len({runner.generate(PROMPT, 16, name, seed=s) for s in range(4, 9)} | {first}) > 1


def test_temperature_top_k_top_p_min_p_compose():
    logits = np.array([3.0, 2.9, 1.0, -2.0, 0.5])
    chain = Sampler("random", top_k=3, top_p=0.6, min_p=0.5, temperature=0.5, seed=0)
    probs = chain.probabilities(logits)
    assert set(np.flatnonzero(probs)) == {0, 1}  # top_k keeps 3, top_p 2, min_p keeps both
    assert Sampler("top_k", top_k=1, seed=1)(logits) == 0
    low = Sampler("random", temperature=0.01, seed=0)
    assert {low(logits) for _ in range(20)} == {0}


@pytest.mark.parametrize("settings", [{}, {"top_k": 50}, {"top_p": 0.9}, {"min_p": 0.05}, {"top_k": 40, "top_p": 0.8},
                                      {"repetition_penalty": 1.3, "frequency_penalty": 0.2}])
def test_a_draw_is_numpys_choice_from_the_chains_probabilities(settings):
    """The draw skips the normalised copy and choice's checks; it must still pick what
    ``Generator.choice(p=probabilities())`` picks for the same seed, on a GPT-2-sized vocabulary (the two
    cumulative sums may differ by ~1e-16, so a draw that close to an edge could part: none of these does)."""
    rng = np.random.default_rng(7)
    for trial in range(4):
        logits = (rng.standard_normal(50257) * (1 + 2 * trial)).astype(np.float32)
        for seed in range(25):
            sampler, reference = Sampler("random", temperature=0.8, seed=seed, **settings), np.random.default_rng(seed)
            for _ in range(3):
                probs = sampler.probabilities(logits, [3, 3, 9])
                assert sampler(logits, [3, 3, 9]) == reference.choice(probs.size, p=probs)


def test_the_draw_is_the_first_token_whose_running_sum_passes_the_uniform_number():
    """``draw`` sums blocks of weights before running through one: the same token as one running sum
    over all of them, on sizes around the block's, with zero weights (filtered tokens) never drawn, and
    a uniform number a hair below 1; weights that sum to nothing usable are a RuntimeFailure."""
    from llm_tflite.runtime.sampling import DRAW_BLOCK, draw

    rng = np.random.default_rng(11)
    for size in (1, 2, DRAW_BLOCK - 1, DRAW_BLOCK, DRAW_BLOCK + 1, 3 * DRAW_BLOCK + 7, 50257):
        for _ in range(60):
            weights = rng.random(size) * (rng.random(size) < rng.choice([0.01, 0.3, 1.0]))
            weights[rng.integers(size)] = rng.random() + 0.1  # at least one token can be drawn
            for u in (rng.random(), 0.0, 1 - 2**-53):
                running = np.cumsum(weights)
                expected = int(np.searchsorted(running / running[-1], u, side="right"))
                got = draw(weights, u)
                assert weights[got] > 0
                if u < 1 - 2**-53:  # the last: rounding may leave the one running sum past the end
                    assert got == expected
    assert draw(np.array([0.0, 2.0, 0.0, 0.0]), 1 - 2**-53) == 1
    for bad in (np.zeros(600), np.array([1.0, np.nan]), np.array([np.inf, 1.0])):
        with pytest.raises(RuntimeFailure, match="not finite"):
            draw(bad, 0.5)


def test_rows_chosen_together_get_the_tokens_their_own_samplers_give():
    """A batched server picks its rows' tokens at once (``choose_rows``): each row's token and its
    generator's draws must be those of its own sampler's call, whatever the other rows hold: GPT-2's
    vocabulary, temperatures from 0.05 to 3, top-k of 1, 5 and 50, greedy, ties, logits up to 100 and
    -inf; rows whose chain is not one operation over all rows (top-p, min-p, penalties, a subclass, a
    plain function) are left to their own call (None), and a row that cannot be drawn gets its error."""
    from llm_tflite.runtime.sampling import choose_rows

    class Lowest(Sampler):
        pass

    configs = [dict(name="random", temperature=0.8), dict(name="random", temperature=1.0), dict(name="top_k"),
               dict(name="top_k", top_k=5, temperature=1.3), dict(name="greedy"), dict(name="random", temperature=0.05),
               dict(name="top_k", top_k=1), dict(name="random", temperature=3.0), dict(name="top_k", top_k=5)]
    alone = [Sampler(seed=i, **c) for i, c in enumerate(configs)]
    together = [Sampler(seed=i, **c) for i, c in enumerate(configs)]
    rng = np.random.default_rng(3)
    for step in range(120):
        logits = (rng.standard_normal((len(configs), 50257)) * [1, 5, 30, 100][step % 4]).astype(np.float32)
        if step % 5 == 0:
            logits[:, :300] = logits[:, 300:600]  # ties
        if step % 7 == 0:
            logits[:, rng.integers(50257, size=40)] = -np.inf
        expected = [sampler(row, [1, 2]) for sampler, row in zip(alone, logits)]
        assert choose_rows(together, list(logits)) == expected, step
    for step in range(30):  # fewer rows than before (the working array kept from a larger call), then more
        rows = sorted(rng.choice(len(configs), size=1 + step % len(configs), replace=False))
        logits = (rng.standard_normal((len(rows), 50257)) * 5).astype(np.float32)
        expected = [alone[i](row, [1, 2]) for i, row in zip(rows, logits)]
        assert choose_rows([together[i] for i in rows], list(logits)) == expected, step
    assert [s.rng.random() for s in alone] == [s.rng.random() for s in together]

    others = [Sampler("top_p", seed=1), Sampler("random", min_p=0.1, seed=1), Sampler("random", repetition_penalty=1.2),
              Sampler("random", presence_penalty=0.5), Lowest("random"), lambda logits, history: 0]
    logits = rng.standard_normal((len(others) + 1, 50)).astype(np.float32)
    assert choose_rows(others + [Sampler("greedy")], list(logits)) == [None] * len(others) + [int(np.argmax(logits[-1]))]
    assert choose_rows([Sampler("random", seed=1)], [logits[0].astype(np.float64)]) == [None]  # not float32: its own call

    bad = np.full(50, np.nan, np.float32)
    failed, fine = choose_rows([Sampler("random", seed=0), Sampler("random", seed=0)], [bad, logits[0]])
    assert isinstance(failed, RuntimeFailure) and "not finite" in str(failed)
    assert fine == Sampler("random", seed=0)(logits[0])
    with pytest.raises(RuntimeFailure, match="not finite"):
        Sampler("random", seed=0)(bad)


def test_penalties(runner):
    logits = np.array([2.0, 1.9, -1.0])
    assert Sampler("greedy", repetition_penalty=2.0)(logits, [0]) == 1  # 2.0 / 2 < 1.9
    assert Sampler("greedy", repetition_penalty=2.0)(np.array([-1.0, -1.5]), [0]) == 1  # -1 * 2 < -1.5
    assert Sampler("greedy", frequency_penalty=0.05)(logits, [0, 0, 0]) == 1  # 2.0 - 0.15 < 1.9
    assert Sampler("greedy", presence_penalty=0.2)(logits, [0]) == 1
    plain = runner.complete(PROMPT, 24).token_ids
    penalised = runner.complete(PROMPT, 24, repetition_penalty=1.5).token_ids
    assert len(set(penalised)) >= len(set(plain)) and penalised != plain


def test_num_beams_and_length_penalty(runner):
    one_beam = runner.complete(PROMPT, 12, "beam", num_beams=1).token_ids
    assert one_beam == runner.complete(PROMPT, 12).token_ids  # one beam is greedy search
    wide = runner.complete(PROMPT, 12, "beam", num_beams=4)
    assert wide.completion_tokens <= 12 and wide.finish_reason in ("length", "stop")


def test_token_level_offers_the_text_level_samplers(runner):
    """generate_ids takes the searches complete takes (plumbing: both reach the engine's loops, whose tokens
    the KerasHub comparison below checks); unknown names are listed."""
    ids = runner.encode(PROMPT)
    assert list(runner.generate_ids(ids, 12, "beam", num_beams=3)) == runner.complete(
        PROMPT, 12, "beam", num_beams=3).token_ids
    assert list(runner.generate_ids(ids, 12, "top_k", seed=4, top_k=5)) == runner.complete(
        PROMPT, 12, "top_k", seed=4, top_k=5).token_ids
    with pytest.raises(InvalidArgumentError, match="unknown sampler 'bream'; choose one of beam, contrastive, greedy"):
        runner.generate_ids(ids, 4, "bream")
    with pytest.raises(InvalidArgumentError, match="sampler='beam' takes"):
        runner.generate_ids(ids, 4, "beam", top_p=0.5)


class _ToySequence:
    """Token 2 ends text; from the start it is likelier (0.6) than token 0 (0.4), which then repeats."""

    def __init__(self, last=None):
        self.last = last

    def fork(self):
        return _ToySequence(self.last)

    def feed(self, tokens):
        self.last = tokens[-1]
        probs = [0.0, 0.0, 1.0] if self.last == 2 else [1.0, 0.0, 0.0]
        return np.log(np.maximum(np.array([probs]), 1e-30))


def test_length_penalty_decides_between_a_short_and_a_long_beam():
    from llm_tflite.runtime.search import beam_search

    start = np.log(np.array([0.4, 1e-30, 0.6]))
    search = dict(max_new_tokens=3, num_beams=2, temperature=1.0, stop_ids=[2])
    assert beam_search(_ToySequence(), start, length_penalty=0.0, **search) == []  # log .6 beats log .4
    assert beam_search(_ToySequence(), start, length_penalty=1.0, **search) == [0, 0, 0]  # log .4 / 3 beats log .6


def test_contrastive_needs_hidden_states(runner, tiny_gpt2_dir, tmp_path):
    with pytest.raises(InvalidArgumentError, match="--hidden-states"):
        runner.complete(PROMPT, 8, "contrastive")
    from llm_tflite import Converter

    path = tmp_path / "hidden.tflite"
    Converter(prefill_lengths=(4, 16), hidden_states=True).convert(str(tiny_gpt2_dir), str(path))
    with_hidden = InterpreterRunner(path)
    assert with_hidden.generate(PROMPT, 10) == runner.generate(PROMPT, 10)  # same logits
    result = with_hidden.complete(PROMPT, 10, "contrastive", top_k=4, penalty_alpha=0.6)
    assert result.completion_tokens == 10
    degenerate = with_hidden.complete(PROMPT, 10, "contrastive", top_k=4, penalty_alpha=0.0)
    assert degenerate.token_ids == runner.complete(PROMPT, 10).token_ids  # alpha 0 is greedy


def test_context_overflow_option(runner):
    long = " ".join(f"w{i}" for i in range(200))
    with pytest.raises(ContextLengthError):
        runner.complete(long, 8)
    truncated = runner.complete(long, 8, context_overflow="truncate")
    assert truncated.prompt_tokens + 8 <= 128 and truncated.prompt.endswith("w199")


def test_filter_option_rejects_prompts_and_stops_streams(runner):
    rejected = runner.complete("you are a bastard", 8, filter=True)
    assert rejected.finish_reason == "filtered" and rejected.token_ids == [] and rejected.filtered == "bastard"
    free = runner.generate(PROMPT, 30)
    marker = free[12:15]

    class Marker:  # any object with find(text) is a filter (a plugin could bring a classifier)
        name = "marker"

        def find(self, text):
            return marker if marker in text else None

    streamed = runner.stream(PROMPT, 30, filter=Marker())
    shown = "".join(streamed)
    assert marker not in shown and streamed.result.finish_reason == "filtered" and streamed.result.filtered == marker
    assert free.startswith(shown) and streamed.result.text == ""


# -- KerasHub parity ------------------------------------------------------------------
def _keras_ids(lm, sampler, prompt_ids, new_tokens, eos):
    from llm_tflite.testing import keras_generate_ids

    return keras_generate_ids(lm, sampler, prompt_ids, new_tokens, eos, stop_token_ids=[eos])


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["ROMEO:", "First Citizen:\nBefore we proceed any further, hear me speak.",
                                    "KING HENRY"])
def test_beam_and_contrastive_equal_keras_hub_on_the_shipped_gpt2(prompt, tmp_path_factory):
    import keras_hub

    from llm_tflite import Converter, load_model

    path = tmp_path_factory.getbasetemp() / "shipped_hidden.tflite"
    if not path.exists():
        Converter(hidden_states=True).convert("gpt2_tiny_shakespeare", str(path))
    runner = InterpreterRunner(path)
    _, lm = load_model("gpt2_tiny_shakespeare")
    ids = runner.encode(prompt)
    beam = _keras_ids(lm, keras_hub.samplers.BeamSampler(num_beams=5), ids, 32, runner.eos_id)
    assert runner.complete(prompt, 32, "beam", num_beams=5).token_ids == beam
    contrastive = _keras_ids(lm, keras_hub.samplers.ContrastiveSampler(k=5, alpha=0.6), ids, 32, runner.eos_id)
    assert runner.complete(prompt, 32, "contrastive", top_k=5, penalty_alpha=0.6).token_ids == contrastive
    # token level offers the same searches as text level (generate_ids once knew only per-token samplers)
    assert list(runner.generate_ids(ids, 32, "beam", num_beams=5)) == beam
    assert list(runner.generate_ids(ids, 32, "contrastive", top_k=5, penalty_alpha=0.6)) == contrastive
    greedy = _keras_ids(lm, keras_hub.samplers.GreedySampler(), ids, 32, runner.eos_id)
    assert runner.complete(prompt, 32).token_ids == greedy


# -- properties -----------------------------------------------------------------------
SAMPLER_CHAINS = st.fixed_dictionaries({}, optional={
    "temperature": st.floats(0.3, 2.0), "top_k": st.integers(1, 60), "top_p": st.floats(0.05, 1.0),
    "min_p": st.floats(0.0, 0.5), "repetition_penalty": st.floats(1.0, 2.0),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40),
       stops=st.lists(st.text(min_size=1, max_size=3), max_size=3),
       sampler=st.sampled_from(["greedy", "random", "top_k", "top_p"]), chain=SAMPLER_CHAINS,
       seed=st.integers(0, 2**32), max_new_tokens=st.integers(1, 24))
def test_streams_join_to_the_result_and_stop_strings_never_appear(runner, prompt, stops, sampler, chain, seed,
                                                                   max_new_tokens):
    result = runner.complete(prompt, max_new_tokens, sampler, seed=seed, stop=stops, **chain)
    stream = runner.stream(prompt, max_new_tokens, sampler, seed=seed, stop=stops, **chain)
    assert "".join(stream) == result.text and stream.result == result
    assert not any(s in result.text for s in stops)
    free = runner.complete(prompt, max_new_tokens, sampler, seed=seed, **chain)
    hits = [free.text.find(s) for s in stops if s in free.text]
    if hits:  # a stop string in the free text: cut before its first occurrence
        assert result.finish_reason == "stop" and result.text == free.text[: min(hits)]
    else:
        assert result.text == free.text and result.finish_reason == free.finish_reason
        assert result.finish_reason in ("length", "stop")
        assert (result.finish_reason == "length") == (result.completion_tokens == max_new_tokens)


# -- the filter and autocomplete --------------------------------------------------------
@pytest.mark.parametrize("text, found", [
    ("what the FUCK", "FUCK"), ("fuuuuck that", "fuuuuck"), ("sh1t happens", "sh1t"), ("a$$hole", "a$$hole"),
    ("God save the king", None), ("the bass player", None), ("a class assignment", None), ("Scunthorpe", None),
])
def test_default_list_catches_words_and_obfuscations_only(text, found):
    from llm_tflite.runtime.filters import default_filter

    assert default_filter().find(text) == found


def test_filter_words_are_escaped_and_user_lists_extend_or_replace():
    assert ProfanityFilter(["c++"]).find("I write c++ daily") == "c++"
    assert ProfanityFilter(["a.b"]).find("axb") is None  # "." is a character, not a wildcard
    extended = ProfanityFilter(extra=["darn"], allow=["hell"])
    assert extended.find("darn it") == "darn" and extended.find("what the hell") is None


class CursingSampler(TokenSampler):
    """A sampler plugin that makes the model say a listed word, whatever its logits."""

    name = "test_cursing"
    generations = 0  # first tokens chosen: one per generation
    token_ids: list = []

    def __init__(self, *, seed=None, **settings):
        super().__init__(seed=seed)
        self.step = 0

    def __call__(self, logits, history):
        if self.step == 0:
            type(self).generations += 1
        token = self.token_ids[self.step % len(self.token_ids)]
        self.step += 1
        return token


class CursingPlugin:
    @hookimpl
    def register_samplers(self, register):
        register(CursingSampler)


@pytest.fixture
def cursing_sampler(runner):
    from llm_tflite.plugins.manager import load_plugins, pm

    load_plugins()
    plugin = CursingPlugin()
    pm.register(plugin, name="cursing")
    CursingSampler.token_ids = runner.tokenizer.encode(" darn darn")
    CursingSampler.generations = 0
    yield CursingSampler
    pm.unregister(plugin)


def test_autocomplete_retries_filtered_output_three_times_then_gives_up(runner, cursing_sampler):
    result = runner.autocomplete("ROMEO: I say", sampler="test_cursing", filter=["darn"], seed=5)
    assert result.suggestion is None and result.reason == "no_suggestion" and result.filtered == "darn"
    assert result.attempts == 3 and cursing_sampler.generations == 3


def test_autocomplete_rejects_bad_language_without_a_model_call(runner, cursing_sampler, monkeypatch):
    calls = []
    monkeypatch.setattr(runner.engine, "tokens", lambda *args: calls.append(1))
    monkeypatch.setattr(runner.engine, "sequence", lambda *args, **kwargs: calls.append(1))
    result = runner.autocomplete("you bastard, say", sampler="test_cursing")
    assert result.reason == "bad_language" and result.suggestion is None and result.attempts == 0
    assert calls == [] and cursing_sampler.generations == 0


def test_autocomplete_answers_from_the_window_of_a_long_text(runner):
    text = " ".join(f"filler{i}" for i in range(196)) + " O Romeo, wherefore art"
    assert len(text.split()) == 200
    result = runner.autocomplete(text, window_words=5, seed=1)
    assert result.prompt == "filler195 O Romeo, wherefore art"
    assert result.suggestion == runner.generate(result.prompt, 32, "top_k", seed=1)
    assert result.words == result.suggestion.split() and result.reason is None


def test_window_rule_counts_cjk_characters_as_words():
    assert window_text("To be,  or not\nto be", 3) == "not\nto be"
    assert window_text("昨夜雨疏风骤，浓睡不消残酒", 5) == "睡不消残酒"
    assert window_text("昨夜雨疏风骤", 3) == "疏风骤" and window_text("hi", 5) == "hi"
    assert window_text("ROMEO: 昨夜雨", 3) == "昨夜雨" and window_text("ROMEO: 昨夜雨", 4) == "ROMEO: 昨夜雨"


# -- generate-mode files ----------------------------------------------------------------
def test_generate_mode_never_returns_the_prompt(tiny_generate_file, tiny_tflite):
    runner = InterpreterRunner(tiny_generate_file)
    long = " ".join(f"w{i}" for i in range(80))
    with pytest.raises(ContextLengthError):
        runner.generate(long)
    result = runner.complete(long, max_new_tokens=6, context_overflow="truncate")
    assert "w0 " not in result.text and "w79" not in result.text and result.prompt.endswith("w79")
    assert result.text == InterpreterRunner(tiny_tflite).generate(result.prompt, 40 - len(runner.encode(
        result.prompt)))[: len(result.text)]
    with pytest.raises(InvalidArgumentError, match="generate-mode file samples with 'greedy'"):
        runner.generate("hi", sampler="top_k")
    with pytest.raises(InvalidArgumentError, match="needs a prefill_decode file"):
        runner.generate("hi", sampler="beam")


def test_generate_mode_text_its_tokenizer_cannot_round_trip(tiny_generate_file, monkeypatch):
    runner = InterpreterRunner(tiny_generate_file)
    monkeypatch.setattr(runner.engine, "generate", lambda prompt: "something else entirely")
    with pytest.raises(RuntimeFailure, match="cannot be told apart from the prompt"):
        runner.generate("ROMEO:")


def test_a_sampler_refuses_probabilities_that_are_not_finite():
    """A logit that is not finite, or a scale that makes one, leaves no distribution to draw from: a typed
    error, never token 0 drawn silently. A temperature so small that logits / temperature would overflow
    (1e-80 is 0 in float32) is refused when the sampler is made, with what to use instead."""
    from llm_tflite.errors import RuntimeFailure
    from llm_tflite.runtime.sampling import MIN_TEMPERATURE, Sampler

    for tiny in (1e-310, 2.6e-80, MIN_TEMPERATURE / 2):
        with pytest.raises(InvalidArgumentError, match="temperature must be a finite number >= 1e-06.*greedy"):
            Sampler("random", temperature=tiny)
    assert Sampler("random", temperature=MIN_TEMPERATURE, seed=0)(np.array([1.0, 2.0, 3.0], np.float32)) == 2
    for sampler, logits in ((Sampler("random", seed=0), np.array([1.0, np.inf, 3.0])),
                            (Sampler("random", seed=0), np.array([1.0, np.nan, 3.0])),
                            (Sampler("top_k", top_k=2, seed=0), np.array([1.0, np.inf, 3.0])),
                            (Sampler("top_k", top_k=2, seed=0), np.array([1.0, np.nan, 0.5, 0.2]))):
        with pytest.raises(RuntimeFailure, match="not finite"):
            sampler(logits)
    assert Sampler("random", temperature=0.8, seed=0)(np.array([0.0, 50.0, 0.0])) == 1
