"""Batched decode (``decode_batch_{B}`` signatures) and continuous batching (``BatchingEngine``):
the same logits and tokens as decoding each sequence alone."""

import gc
import os
import threading
import time
import weakref

import numpy as np
import pytest

from llm_tflite import Converter, InterpreterRunner
from llm_tflite.errors import InvalidArgumentError, ModelFileError, RuntimeFailure
from llm_tflite.litert.metadata import add_metadata, read_metadata_from_bytes, validate_record

PROMPTS = ["ROMEO:", "JULIET: O Romeo", "First Citizen:\nBefore we proceed any further, hear me speak.",
           "KING:", "Thou", "My lord, I", "MENENIUS:"]


def at_once(count: int, work) -> list:
    """``[work(0), ..., work(count - 1)]``, each in its own thread, all started together."""
    results, barrier = [None] * count, threading.Barrier(count)

    def run(i):
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def alone(runner, ids, steps):
    """Greedy tokens and each step's logits of one sequence decoded by itself."""
    sequence = runner.sequence()
    logits = sequence.feed(ids)[-1]
    tokens, all_logits = [], []
    for _ in range(steps):
        all_logits.append(logits)
        tokens.append(int(logits.argmax()))
        logits = sequence.feed([tokens[-1]])[-1]
    return tokens, all_logits


def rows_against_alone(runner, prompts, steps):
    """Decode ``prompts``' sequences together (``decode_rows``) for ``steps`` greedy steps, each row's logits
    checked equal to its sequence's alone, bit for bit; the sequences."""
    expected = [alone(runner, ids, steps) for ids in prompts]
    sequences = [runner.sequence() for _ in prompts]
    logits = [s.feed(ids)[-1] for s, ids in zip(sequences, prompts)]
    pad = runner.engine.new_state()
    for step in range(steps):
        for row, (_, step_logits) in enumerate(expected):
            np.testing.assert_array_equal(logits[row], step_logits[step], err_msg=f"row {row}, step {step}")
        logits = list(runner.engine.decode_rows([s.caches for s in sequences], [t[step] for t, _ in expected],
                                                [s.position for s in sequences], pad))
        for sequence in sequences:
            sequence.position += 1
    return sequences


def test_record_and_signatures(batched_file):
    runner = InterpreterRunner(batched_file)
    assert runner.metadata["decode_batch_sizes"] == [2, 4]
    assert runner.metadata["decode_batch_windows"] == [32, 64]  # windows given: the batched signatures get those
    names = set(runner.engine.input_details)
    assert {"decode_batch_2", "decode_batch_2_window_32", "decode_batch_4_window_64"} <= names
    inputs = runner.engine.input_details["decode_batch_4"]
    assert list(inputs["tokens"]["shape"]) == [4, 1] and list(inputs["input_pos"]["shape"]) == [4]
    assert list(inputs["kv_cache_k_1_row3"]["shape"]) == list(inputs["kv_cache_k_1_row0"]["shape"])


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_rows_decode_the_logits_of_each_sequence_alone(batched_file, count):
    """Rows at different positions (one crossing from window 32 to 64 to the full decode), padded
    rows (1 in a batch of 2, 1 in a batch of 4): every row's logits equal its sequence's alone,
    bit for bit."""
    runner = InterpreterRunner(batched_file, weight_cache="memory")
    prompts = [runner.encode(p) for p in PROMPTS[:count]]
    prompts[-1] = (prompts[-1] * 8)[:26]  # this one passes positions 32 and 64 within 48 steps
    sequences = rows_against_alone(runner, prompts, 48)
    assert max(s.position for s in sequences) > 64


def test_rows_with_int8_caches_decode_the_logits_of_each_sequence_alone(tiny_gpt2_dir, tmp_path):
    """int8 caches (values and per-slot scales, each row's own) in a ``decode_batch_2``: two rows at
    different positions, one crossing the windows 32 and 48 (batched only), give their logits alone."""
    path = tmp_path / "int8_caches_batched.tflite"
    Converter(context_length=128, prefill_lengths=(4,), batch_sizes=(2,), kv_cache="int8").convert(
        str(tiny_gpt2_dir), str(path))
    runner = InterpreterRunner(path, weight_cache="memory")
    assert runner.metadata["decode_batch_windows"] == [32, 48, 64, 96]
    prompts = [runner.encode(PROMPTS[0]), (runner.encode(PROMPTS[2]) * 4)[:28]]
    sequences = rows_against_alone(runner, prompts, 24)
    assert sequences[1].position > 48


def test_rows_in_batched_windows_between_the_decode_windows_decode_each_sequence_alone(tiny_gpt2_dir, tmp_path):
    """By default a batched file's ``decode_batch`` signatures also attend over the windows halfway between
    its decode windows (48 and 96 at context 128), while a sequence alone uses 32, 64 and the whole cache.
    Rows crossing all of them give their logits alone, bit for bit: XNNPACK's softmax sums a row in an
    order that depends on its length (``families.ops._softmax`` pads a row to a power of two)."""
    path = tmp_path / "auto_windows_batched.tflite"
    Converter(context_length=128, prefill_lengths=(4, 16), batch_sizes=(2,)).convert(str(tiny_gpt2_dir), str(path))
    runner = InterpreterRunner(path, weight_cache="memory")
    engine = runner.engine
    assert runner.metadata["decode_windows"] == [32, 64]
    assert runner.metadata["decode_batch_windows"] == [32, 48, 64, 96]
    assert [engine.decode_batch_signature(2, p) for p in (31, 32, 47, 48, 70, 96)] == [
        "decode_batch_2_window_32", "decode_batch_2_window_48", "decode_batch_2_window_48",
        "decode_batch_2_window_64", "decode_batch_2_window_96", "decode_batch_2"]
    prompts = [runner.encode(PROMPTS[0]), (runner.encode(PROMPTS[2]) * 8)[:30]]
    sequences = rows_against_alone(runner, prompts, 80)
    assert sequences[1].position > 96


def test_a_call_reuses_its_buffers_binding_only_for_the_same_states_in_the_same_order(batched_file):
    """``_bind`` keeps the runtime's arrays of recent calls' buffers: the same state objects in the same
    order (and signature) get them again; other states, another order, or other objects under a kept
    key's ids do not, and at most ``BINDINGS`` are kept. Calls use them. Sequences taking turns on one
    engine still decode their own logits."""
    import weakref

    from llm_tflite.runtime.prefill_decode import BINDINGS

    runner = InterpreterRunner(batched_file, weight_cache="memory")
    engine = runner.engine
    if not hasattr(engine.model, "bind"):
        pytest.skip("ai_edge_litert's wrapper (LLM_TFLITE_BINDING=python) runs every call by name")
    a, b, c = engine.new_state(), engine.new_state(), engine.new_state()
    others = [engine.new_state() for _ in range(BINDINGS + 1)]
    name = "decode_batch_2"
    engine._io.setdefault(name, engine._signature_buffers(name))
    with engine._lock:
        first = engine._bind(name, [a, b])
        assert engine._bind(name, [a, b]) is first
        assert engine._bind(name, [b, a]) is not first
        assert engine._bind(name, [a, c]) is not first
        kept = engine._bindings[(name, id(a), id(c))]
        engine._bindings[(name, id(a), id(c))] = ([weakref.ref(a), weakref.ref(b)], kept[1])  # other objects
        assert engine._bind(name, [a, c]) is not kept[1]
        for other in others:
            engine._bind(name, [a, other])
        assert len(engine._bindings) == BINDINGS
        assert engine._bind(name, [a, b]) is not first  # dropped, made again
    engine._bindings.clear()
    engine.decode_rows([a, b], [1, 2], [0, 0], c)
    engine.decode_rows([a, b], [3, 4], [1, 1], c)
    assert list(engine._bindings) == [(engine.decode_batch_signature(2, 1), id(a), id(b))]  # the calls bound once
    prompts = [runner.encode(p) for p in PROMPTS[:3]]
    expected = [alone(runner, ids, 8)[1] for ids in prompts]
    sequences = [runner.sequence() for _ in prompts]
    logits = [s.feed(ids)[-1] for s, ids in zip(sequences, prompts)]
    steps = [0, 0, 0]
    pad = engine.new_state()
    for turn in range(9):  # in turn: one alone, two in a changing order, all three
        rows = [[turn % 3], [(turn + 1) % 3, turn % 3], [2, 0, 1]][turn % 3]
        for row in rows:
            np.testing.assert_array_equal(logits[row], expected[row][steps[row]])
        tokens = [int(logits[row].argmax()) for row in rows]
        if len(rows) == 1:
            logits[rows[0]] = sequences[rows[0]].feed(tokens)[-1]
        else:
            decoded = engine.decode_rows([sequences[row].caches for row in rows], tokens,
                                         [sequences[row].position for row in rows], pad)
            for row, row_logits in zip(rows, decoded):
                logits[row] = row_logits
                sequences[row].position += 1
        for row in rows:
            steps[row] += 1


def test_concurrent_generations_decode_together_with_unbatched_outputs(batched_file):
    """Seven threads (more than the largest batch): greedy and seeded random texts equal the
    unbatched runner's, and the steps carried several rows."""
    plain = InterpreterRunner(batched_file)
    batched = InterpreterRunner(batched_file, batching=True)
    expected = [(plain.complete(p, 40, "greedy").text, plain.complete(p, 40, "random", temperature=0.9, seed=i).text)
                for i, p in enumerate(PROMPTS)]
    got = at_once(len(PROMPTS), lambda i: (batched.complete(PROMPTS[i], 40, "greedy").text,
                                             batched.complete(PROMPTS[i], 40, "random", temperature=0.9, seed=i).text))
    assert got == expected
    engine = batched.engine
    assert engine.rows > engine.steps > 0  # steps carried several sequences


def test_finished_sequences_leave_their_cache_buffers_to_the_next_ones(batched_file):
    """A server's slots finish and start together: up to the largest batch (4 here) of finished
    sequences' buffers wait for new sequences, which get them cleared."""
    runner = InterpreterRunner(batched_file)
    engine = runner.engine
    sequences = [runner.sequence() for _ in range(6)]
    for sequence in sequences:
        sequence.feed_last(runner.encode("ROMEO: what light through yonder window breaks"))
    del sequences, sequence
    gc.collect()
    spares = list(engine._spares)
    assert engine.max_spares == 4 and len(spares) == 4
    again = [runner.sequence() for _ in range(6)]
    assert sum(any(s.caches is spare for spare in spares) for s in again) == 4 and not engine._spares
    assert all(not buffer.read(int(np.prod(engine.cache_specs[name][0])), engine.cache_specs[name][1]).any()
               for s in again for name, buffer in s.caches.items())  # the buffers themselves, not the views


def test_streams_and_stop_rules_work_per_request(batched_file):
    plain = InterpreterRunner(batched_file)
    batched = InterpreterRunner(batched_file, batching=True)
    options = [dict(stop=["e"]), dict(max_new_tokens=5), dict(sampler="top_k", seed=3)]
    expected = [plain.complete("ROMEO:", **{"max_new_tokens": 30, **o}).text for o in options]
    got = at_once(len(options), lambda i: "".join(batched.stream("ROMEO:", **{"max_new_tokens": 30, **options[i]})))
    assert got == expected


def test_batching_needs_a_file_with_batch_signatures(tiny_tflite):
    with pytest.raises(InvalidArgumentError, match="--batch-sizes"):
        InterpreterRunner(tiny_tflite, batching=True)


def test_batch_size_options_are_checked(tiny_gpt2_dir, tmp_path, monkeypatch):
    with pytest.raises(InvalidArgumentError, match="batch_sizes must be integers 2..32"):
        Converter(batch_sizes=(1, 4))
    with pytest.raises(InvalidArgumentError, match="prefill_decode option"):
        Converter(mode="generate", batch_sizes=(4,))
    (tmp_path / "calibration.txt").write_text("ROMEO: hello there, my lord.\n" * 20)
    with pytest.raises(InvalidArgumentError, match="calibrates the single-sequence signatures only"):
        Converter(quantize="full_int8", calibration=str(tmp_path / "calibration.txt"), batch_sizes=(4,))
    from llm_tflite.errors import ConversionError
    from llm_tflite.families.gpt2 import GPT2Family

    # a family (a plugin's) that does not say its forward pass can decode a batch is refused, not traced
    monkeypatch.setattr(GPT2Family, "batched_decode", False)
    with pytest.raises(ConversionError, match="ModelFamily.batched_decode"):
        Converter(batch_sizes=(2,)).convert(str(tiny_gpt2_dir), str(tmp_path / "x.tflite"))
    assert not (tmp_path / "x.tflite").exists()


def test_searches_run_on_a_batching_runner(batched_file):
    """Beam and contrastive search feed forks one by one, outside any batch: same tokens as unbatched."""
    plain, batched = InterpreterRunner(batched_file), InterpreterRunner(batched_file, batching=True)
    for sampler in ("beam", "greedy"):
        assert batched.complete("ROMEO:", 12, sampler).text == plain.complete("ROMEO:", 12, sampler).text


def test_a_record_with_bad_batch_sizes_is_refused(batched_file, tmp_path):
    record = read_metadata_from_bytes(batched_file.read_bytes())
    for bad in ([1], [64], ["4"], 4):
        with pytest.raises(ModelFileError, match="decode_batch_sizes"):
            validate_record({**record, "decode_batch_sizes": bad}, "f")
    for bad in ([0], [record["context_length"]], ["48"], 48):
        with pytest.raises(ModelFileError, match="decode_batch_windows"):
            validate_record({**record, "decode_batch_windows": bad}, "f")


def test_files_without_batch_windows_batch_over_their_decode_windows_and_listed_ones_must_exist(batched_file,
                                                                                                 tmp_path):
    """Files written before ``decode_batch_windows``: their batched signatures have the decode windows. A
    record listing a batched window the file lacks is refused, typed."""
    data = batched_file.read_bytes()
    record = read_metadata_from_bytes(data)
    record.pop("sha256", None)
    older = {key: value for key, value in record.items() if key != "decode_batch_windows"}
    path = tmp_path / "older.tflite"
    path.write_bytes(add_metadata(data, older))
    engine = InterpreterRunner(path, weight_cache="memory").engine
    assert engine.batch_windows == [32, 64]
    assert [engine.decode_batch_signature(2, p) for p in (20, 40, 64)] == [
        "decode_batch_2_window_32", "decode_batch_2_window_64", "decode_batch_2"]
    path.write_bytes(add_metadata(data, {**record, "decode_batch_windows": [32, 48, 64]}))
    with pytest.raises(ModelFileError, match="lacks signatures.*decode_batch_2_window_48"):
        InterpreterRunner(path)


def test_a_record_listing_missing_batch_signatures_is_refused(tiny_tflite, tmp_path):
    data = tiny_tflite.read_bytes()
    record = read_metadata_from_bytes(data)
    record.pop("sha256", None)
    path = tmp_path / "lying.tflite"
    path.write_bytes(add_metadata(data, {**record, "decode_batch_sizes": [4]}))
    with pytest.raises(ModelFileError, match="lacks signatures.*decode_batch_4"):
        InterpreterRunner(path)


def _scheduler_threads() -> int:
    return sum(thread.name == "llm-tflite-batching" for thread in threading.enumerate())


def test_a_closed_engine_refuses_and_a_dropped_runner_is_freed(batched_file):
    runner = InterpreterRunner(batched_file, batching=True, weight_cache="memory")
    assert runner.complete("ROMEO:", 4).text
    runner.engine.close()
    with pytest.raises(RuntimeFailure, match="closed"):
        runner.complete("ROMEO:", 4)
    before = _scheduler_threads()
    runner = InterpreterRunner(batched_file, batching=True, weight_cache="memory")
    assert runner.complete("ROMEO:", 4).text and _scheduler_threads() == before + 1
    engine = weakref.ref(runner.engine)
    del runner
    gc.collect()
    assert engine() is None  # the scheduler thread does not keep it alive
    deadline = time.time() + 10
    while _scheduler_threads() > before and time.time() < deadline:
        time.sleep(0.05)
    assert _scheduler_threads() == before


def test_rows_are_grouped_by_window_when_another_call_costs_less(batched_file):
    """A call attends over its furthest row's window: rows far apart go in separate calls, rows near
    each other (or in a model whose weights cost more than the extra attention) in one."""
    from llm_tflite.runtime.batching import _Job

    engine = InterpreterRunner(batched_file, batching=True, weight_cache="memory").engine
    jobs = [_Job(None, np.zeros((1, 1), np.int32), np.array([p], np.int32)) for p in (3, 5, 40, 100)]

    def calls(model_bytes):
        engine.inner.model_bytes = model_bytes
        return [[int(j.input_pos[0]) for j in call] for call in engine._calls(jobs)]

    slot = 3 * 4 * 2 * 16 * 4  # bytes a row reads per window slot: 3 passes over 4 caches of 2 heads x 16 floats
    assert calls(1) == [[3, 5], [40], [100]]  # windows 32, 64 and the whole context (128)
    assert calls(10**12) == [[3, 5, 40, 100]]  # weights dearer than any attention: one call
    # window 32 -> 64 costs the first two rows 2 x 32 slots; 64 -> 128 costs three rows 3 x 64 slots
    assert calls(2 * 32 * slot + 1) == [[3, 5, 40], [100]]
    assert calls(3 * 64 * slot + 1) == [[3, 5, 40, 100]]


def test_prompts_waiting_together_run_their_chunks_in_one_step():
    from llm_tflite.runtime.batching import PROMPT_TOKENS, _Job, _prompt_chunks

    def waiting(*lengths):
        return [_Job(None, np.zeros((1, n), np.int32), np.arange(n), f"prefill_{n}") for n in lengths]

    assert PROMPT_TOKENS == 128  # a chunk costs its length + 16 (a read of the weights)
    queue = waiting(*[8] * 12)  # 12 short prompts arriving together: 5 (5 x 24 = 120), 5, then 2
    assert [len(_prompt_chunks(queue)) for _ in range(4)] == [5, 5, 2, 0]
    queue = waiting(128, 8)  # a long prompt's chunk alone, the short one next
    assert [j.tokens.shape[1] for j in _prompt_chunks(queue)] == [128] and len(queue) == 1
    queue = waiting(32, 128, 8)  # in order: the 8 does not overtake the 128
    assert [j.tokens.shape[1] for j in _prompt_chunks(queue)] == [32] and len(queue) == 2
    queue = waiting(32, 32, 8, 8)  # 48 + 48 + 24 = 120
    assert [j.tokens.shape[1] for j in _prompt_chunks(queue)] == [32, 32, 8] and len(queue) == 1


def test_a_failing_step_fails_its_callers_and_the_scheduler_goes_on(batched_file, monkeypatch):
    runner = InterpreterRunner(batched_file, batching=True, weight_cache="memory")
    engine = runner.engine

    def broken(jobs):
        raise ValueError("boom")

    monkeypatch.setattr(engine, "_calls", broken)
    with pytest.raises(RuntimeFailure, match="scheduler failed: ValueError: boom"):
        runner.complete("ROMEO:", 8, "greedy")
    monkeypatch.undo()
    assert runner.complete("ROMEO:", 8, "greedy").text == InterpreterRunner(batched_file).complete("ROMEO:", 8, "greedy").text


def test_a_generation_closed_early_leaves_its_sequence_where_the_plain_loop_would(batched_file):
    """The scheduler runs a generation's loop ahead of its thread (at most ``AHEAD`` tokens, also when
    the thread reads slowly); closed after its k-th token, the sequence holds what the plain loop's
    would: the prompt and k - 1 tokens, and feeding it goes on with the same logits. The caller's
    history and sampler are left as the plain loop leaves them too: a sampler object used for the next
    generation draws the same tokens batched or not."""
    from llm_tflite.runtime.batching import AHEAD
    from llm_tflite.runtime.sampling import Sampler

    plain, batched = InterpreterRunner(batched_file), InterpreterRunner(batched_file, batching=True)
    ids = plain.encode("JULIET: O Romeo")
    for taken in (1, 3):
        loops = []
        for runner in (plain, batched):
            sequence, sampler, history = runner.sequence(), Sampler("random", temperature=0.9, seed=5), list(ids)
            logits = sequence.feed_last(ids)
            steps = sequence.generate(logits, sampler, history, 30, set())
            tokens = [next(steps)[0] for _ in range(taken)]
            if runner is batched:
                time.sleep(0.3)  # a slow reader: its generation waits for it
                assert len(ids) + taken - 1 < sequence.position <= len(ids) + taken + AHEAD
            steps.close()
            assert sequence.position == len(ids) + taken - 1 and sequence.fed == len(ids) + taken - 1
            assert history == ids + tokens
            logits = sequence.feed_last(tokens[-1:])
            again = [token for token, _ in sequence.generate(logits, sampler, history, 5, set())]
            loops.append((tokens, logits, again, history, sampler.rng.random()))
        assert loops[0][0] == loops[1][0] and loops[0][2] == loops[1][2] and loops[0][3] == loops[1][3]
        assert loops[0][4] == loops[1][4]
        np.testing.assert_array_equal(loops[0][1], loops[1][1])


def test_a_stream_collected_by_a_thread_holding_the_schedulers_lock_neither_hangs_nor_leaks(batched_file):
    """A stream in a reference cycle is stopped by whichever thread's garbage collection finds it, maybe
    one holding a lock the scheduler needs (here the queue's). It must not wait for the scheduler
    there: the scheduler rewinds the sequence when it lets the generation go (where the plain loop
    would leave it) and gives a closed sequence's caches back."""
    runner = InterpreterRunner(batched_file, batching=True, weight_cache="memory")
    engine = runner.engine
    ids = runner.encode("JULIET: O Romeo")

    def greedy(logits, history):
        return int(np.argmax(logits))

    def collected_holding_the_lock(box):
        cycle = [box.pop()]  # the last reference to the stream
        cycle.append(cycle)  # only the garbage collector frees it
        del cycle
        done = threading.Event()

        def collect():
            with engine._lanes[0].queue.cond:
                gc.collect()
            done.set()

        threading.Thread(target=collect, daemon=True).start()
        return done

    sequence = runner.sequence()
    steps = sequence.generate(sequence.feed_last(ids), greedy, list(ids), 30, set())
    taken = [next(steps)[0], next(steps)[0]]
    box = [steps]
    del steps
    assert collected_holding_the_lock(box).wait(10), "the collected stream waited for the scheduler"
    # fed again at once, it waits for the scheduler to hand it back, rewound: the plain loop's logits
    logits = sequence.feed_last(taken[1:])
    assert not engine._lanes[0].queue.generations and sequence.generation is None
    assert sequence.position == sequence.fed == len(ids) + 2  # two tokens taken and fed
    plain = InterpreterRunner(batched_file).sequence()
    plain.feed_last(ids)
    plain.feed_last(taken[:1])
    np.testing.assert_array_equal(logits, plain.feed_last(taken[1:]))

    spares = len(engine.inner._spares)
    steps = engine.sample_tokens(ids, 30, greedy, set())  # its own sequence, closed when it ends
    assert next(steps)[0] is not None
    box = [steps]
    del steps
    assert collected_holding_the_lock(box).wait(10), "the collected stream waited for the scheduler"
    deadline = time.time() + 10
    while len(engine.inner._spares) == spares and time.time() < deadline:
        time.sleep(0.01)
    assert len(engine.inner._spares) == spares + 1  # its caches are back, after the scheduler let go
    assert runner.complete("ROMEO:", 4, "greedy").text == InterpreterRunner(batched_file).complete("ROMEO:", 4, "greedy").text


def test_a_sampler_error_reaches_its_own_generation_typed_and_the_others_go_on(batched_file):
    """A generation's sampler runs in the scheduler thread; what it raises, its generation raises (the
    same error the plain loop would), while the others decode on to the unbatched runner's text."""
    class Refused(Exception):
        pass

    plain, batched = InterpreterRunner(batched_file), InterpreterRunner(batched_file, batching=True)
    expected = plain.complete("ROMEO:", 30, "greedy").text
    calls = []

    def refuses(logits, history):
        calls.append(len(history))
        if len(calls) == 3:
            raise Refused("no token fits")
        return int(np.argmax(logits))

    def work(i):
        if i == 0:
            with pytest.raises(Refused, match="no token fits"):
                batched.complete("KING:", 30, refuses)
            return "raised"
        return batched.complete("ROMEO:", 30, "greedy").text

    assert at_once(3, work) == ["raised", expected, expected]
    assert len(calls) == 3


def test_closing_the_engine_ends_running_generations_with_an_error(batched_file):
    runner = InterpreterRunner(batched_file, batching=True, weight_cache="memory")
    stream = runner.stream("ROMEO:", 60, "greedy")
    assert next(stream)
    runner.engine.close()
    with pytest.raises(RuntimeFailure, match="closed"):
        for _ in stream:
            pass


def test_a_closed_sequence_gives_its_caches_back_at_once_and_refuses_more(batched_file):
    runner = InterpreterRunner(batched_file, weight_cache="memory")
    engine = runner.engine
    sequence = runner.sequence()
    sequence.feed_last(runner.encode("ROMEO:"))
    caches = sequence.caches
    spares = len(engine._spares)
    sequence.close()
    sequence.close()  # twice: nothing more
    assert len(engine._spares) == spares + 1 and engine._spares[-1] is caches
    with pytest.raises(InvalidArgumentError, match="closed"):
        sequence.feed_last([5])
    with pytest.raises(InvalidArgumentError, match="closed"):
        sequence.fork()
    assert runner.sequence().caches is caches  # the next one takes them, cleared


def test_a_server_reserves_its_slots_so_requests_arriving_together_allocate_no_cache(batched_file, monkeypatch):
    """``RunnerPool`` makes every slot's caches (and the padding rows') before the first request; 4
    generations at once, and 4 more after them, take those buffers and no new ones."""
    from llm_tflite.runtime.prefill_decode import PrefillDecodeEngine
    from llm_tflite.serve.pool import RunnerPool

    pool = RunnerPool(lambda: InterpreterRunner(batched_file, batching=True, weight_cache="memory"), 1, 5)
    runner = pool.runners[0]
    assert pool.parallel == 4 and len(runner.engine.inner._spares) == 4 and runner.engine._lanes[0].pad is not None
    made = []
    create = PrefillDecodeEngine.new_state

    def counting(self):
        made.append(not self._spares)  # True: no spare left, new buffers
        return create(self)

    monkeypatch.setattr(PrefillDecodeEngine, "new_state", counting)
    for _ in range(2):
        assert all(at_once(4, lambda i: runner.complete(PROMPTS[i], 12, "random", seed=i).text))
    assert made == [False] * 8 and len(runner.engine.inner._spares) == 4


def test_a_generation_with_no_room_for_tokens_yields_none_batched_or_not(batched_file):
    from llm_tflite.runtime.sampling import Sampler

    for runner in (InterpreterRunner(batched_file), InterpreterRunner(batched_file, batching=True)):
        sequence = runner.sequence()
        ids = runner.encode("ROMEO:")
        logits = sequence.feed_last(ids)
        assert list(sequence.generate(logits, Sampler("greedy"), list(ids), 0, set())) == []
        assert sequence.position == len(ids)


def skip_without_the_c_api(batched_file):
    if not hasattr(InterpreterRunner(batched_file, weight_cache="memory").engine.model, "run_bound"):
        pytest.skip("lanes need LiteRT's C API (here: ai_edge_litert's wrapper, LLM_TFLITE_BINDING=python or no "
                    "libLiteRt.so)")


def test_generations_join_the_first_lane_with_room_else_the_one_with_the_fewest(batched_file, monkeypatch):
    skip_without_the_c_api(batched_file)
    engine = InterpreterRunner(batched_file, num_threads=2, batching=True, lanes=2).engine
    engine.close()  # no scheduler reads the queues filled here

    def joins(counts):
        for lane, count in zip(engine._lanes, counts):
            lane.queue.generations = [object()] * count
        return engine._lanes.index(engine._lane_for(None))

    from llm_tflite.runtime.batching import LANE_SLOTS

    assert LANE_SLOTS == 4  # up to 4 rows decode faster as one call on all the threads
    assert [joins(c) for c in ([0, 0], [3, 0], [4, 0], [4, 3], [4, 4], [5, 4], [6, 7])] == [0, 0, 1, 1, 0, 1, 0]


def lanes_runner(batched_file, monkeypatch, **options):
    """A batching runner with two lanes, the second taking generations past 2 in the first."""
    skip_without_the_c_api(batched_file)
    monkeypatch.setattr("llm_tflite.runtime.batching.LANE_SLOTS", 2)
    return InterpreterRunner(batched_file, num_threads=2, batching=True, lanes=2, **options)


def _recording(engine, ran, label):
    """Record (label, thread) for each of ``engine``'s calls."""
    call = engine.call

    def recorded(*args, **kwargs):
        ran.append((label, threading.current_thread()))
        return call(*args, **kwargs)

    engine.call = recorded


def test_lanes_decode_their_generations_at_once_with_the_unbatched_outputs(batched_file, monkeypatch):
    """Two lanes (a scheduler and a compiled model of one thread each, the sequences' caches bound by
    either): one generation alone computes on the engine's 2 threads; seven threads' greedy and seeded
    random texts equal the unbatched runner's, each lane's calls on its own twin in its own thread;
    closing the engine ends both schedulers."""
    plain = InterpreterRunner(batched_file)
    batched = lanes_runner(batched_file, monkeypatch)
    engine = batched.engine
    first, second = engine._lanes
    assert engine.lanes == 2 and first.engine is not engine.inner and second.engine is not first.engine
    ran = []
    for label, model in (("engine", engine.inner), ("first", first.engine), ("second", second.engine)):
        _recording(model, ran, label)
    assert batched.complete(PROMPTS[0], 12, "greedy").text == plain.complete(PROMPTS[0], 12, "greedy").text
    assert {label for label, _ in ran} == {"engine"}  # alone: all the threads
    ran.clear()
    expected = [(plain.complete(p, 40, "greedy").text, plain.complete(p, 40, "random", temperature=0.9, seed=i).text)
                for i, p in enumerate(PROMPTS)]
    first.idle = second.idle = lambda: False  # neither ever counts as alone: each lane's steps on its own twin
    got = at_once(len(PROMPTS), lambda i: (batched.complete(PROMPTS[i], 40, "greedy").text,
                                             batched.complete(PROMPTS[i], 40, "random", temperature=0.9, seed=i).text))
    del first.idle, second.idle
    assert got == expected
    assert {thread for label, thread in ran if label == "first"} == {first.thread}
    assert {thread for label, thread in ran if label == "second"} == {second.thread}
    assert engine._pad_of(first) is not engine._pad_of(second)  # lanes run at once: each its own rows for padding
    engine.close()
    assert not first.thread.is_alive() and not second.thread.is_alive()


def test_a_dropped_runner_with_lanes_is_freed_and_its_schedulers_end(batched_file, monkeypatch):
    runner = lanes_runner(batched_file, monkeypatch, weight_cache="memory")
    assert all(at_once(5, lambda i: runner.complete(PROMPTS[i], 8, "greedy").text))
    threads = [lane.thread for lane in runner.engine._lanes]
    engine = weakref.ref(runner.engine)
    del runner
    gc.collect()
    assert engine() is None  # no scheduler thread keeps it alive
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_a_failing_lane_fails_its_rows_typed_and_the_others_and_later_steps_go_on(batched_file, monkeypatch):
    plain = InterpreterRunner(batched_file)
    runner = lanes_runner(batched_file, monkeypatch, weight_cache="memory")
    batching = runner.engine
    first, second = batching._lanes
    # Every generation joins the second lane, which never counts as alone (so its calls always run on its
    # twin), and the twin's first decode step, one row's or several, fails: no timing decides where work runs.
    batching._lane_for = lambda sequence: second
    first.idle = lambda: False
    twin, broke = second.engine, []
    for method in ("call", "decode_rows"):
        def broken(*args, _real=getattr(twin, method), _rows=method == "decode_rows", **kwargs):
            if not broke and (_rows or args[0].startswith("decode")):
                broke.append(True)
                raise ValueError("boom")
            return _real(*args, **kwargs)

        setattr(twin, method, broken)
    prompts = PROMPTS[:6]

    def complete(i):
        try:
            return runner.complete(prompts[i], 12, "greedy").text
        except RuntimeFailure as e:
            return e

    got = at_once(len(prompts), complete)
    failed = [g for g in got if isinstance(g, RuntimeFailure)]
    assert broke and failed and all("boom" in str(e) for e in failed)
    assert [g for g in got if not isinstance(g, RuntimeFailure)] == \
        [plain.complete(p, 12, "greedy").text for p, g in zip(prompts, got) if not isinstance(g, RuntimeFailure)]
    del batching._lane_for, first.idle  # both lanes again, as they choose
    assert at_once(len(prompts), lambda i: runner.complete(prompts[i], 12, "greedy").text) == \
        [plain.complete(p, 12, "greedy").text for p in prompts]


def test_lane_options_are_checked(batched_file, monkeypatch):
    with pytest.raises(InvalidArgumentError, match=r"lanes must be 'auto' or an integer from 1 to the engine's threads "
                                                   r"\(2\), got 3"):
        InterpreterRunner(batched_file, num_threads=2, batching=True, lanes=3)
    for bad in (0, True, 1.5, "two"):
        with pytest.raises(InvalidArgumentError, match="lanes must be 'auto' or a positive integer"):
            InterpreterRunner(batched_file, num_threads=2, batching=True, lanes=bad)
    with pytest.raises(InvalidArgumentError, match="needs batching"):
        InterpreterRunner(batched_file, num_threads=2, lanes=2)
    # auto: two lanes where the runner has 2 threads or more, LiteRT's C API runs the calls and batches
    # reach past LANE_SLOTS rows (this file's reach 4)
    assert InterpreterRunner(batched_file, num_threads=2, batching=True, lanes="auto").engine.lanes == 1
    skip_without_the_c_api(batched_file)
    monkeypatch.setattr("llm_tflite.runtime.batching.LANE_SLOTS", 3)
    assert InterpreterRunner(batched_file, num_threads=2, batching=True, lanes="auto").engine.lanes == 2
    assert InterpreterRunner(batched_file, num_threads=1, batching=True, lanes="auto").engine.lanes == 1
    monkeypatch.setenv("LLM_TFLITE_BINDING", "python")
    assert InterpreterRunner(batched_file, num_threads=2, batching=True, lanes="auto").engine.lanes == 1
    with pytest.raises(InvalidArgumentError, match="lanes need LiteRT's C API"):
        InterpreterRunner(batched_file, num_threads=2, batching=True, lanes=2)
