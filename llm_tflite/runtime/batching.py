"""Continuous batching: the decode steps of concurrent generations run as one batched call.

On a CPU a decode step is bound by reading the weights; a ``decode_batch_{B}`` signature
(``Converter(batch_sizes=...)``) reads them once for ``B`` sequences. ``BatchingEngine`` wraps a
``PrefillDecodeEngine``: every generation keeps its own thread, sampler, seed, stop rules,
filters and chat state, exactly as without batching; its ``BatchedSequence``'s calls, and the
loop of its generation (``Sequence.generate``), run in a scheduler thread (one, or one per lane:
``BatchingEngine(lanes=...)``, each lane with a compiled model of its own), which

- picks each running generation's next token with the generation's own sampler (``choose``) from
  the logits of the last step (the built-in samplers' rows all at once: ``sampling.choose_rows``),
  hands it to the generation's thread, and decodes all of them as ``decode_rows`` calls: one,
  unless rows far apart in the context cost less as a call per batched window (``_calls``), and at
  most the largest batch the file has per call. Nothing waits for the
  generations' threads: their text (detokenizing, stop strings, filters, a server's stream) is
  made while the next step runs, at most ``AHEAD`` tokens behind;
- runs the next chunk of waiting prompts between two decode steps, as many prompts' as fit
  ``PROMPT_TOKENS`` (at least one; a chunk costs its length plus a read of the weights), so a
  long prompt joining never stalls the streams already running, and clients arriving together
  all get their first token within a step or two;
- runs any other call (a search's, a ``Sequence`` fed directly) with the next step.

Decoding a sequence in a batch gives the same logits as decoding it alone (each row has its
own caches and position; checked bit for bit in ``tests/test_batching.py``), and a generation
draws the same tokens as the unbatched loop: the same sampler sees the same logits in order.
"""

from __future__ import annotations

import collections
import gc
import queue as queues
import threading
import weakref

import numpy as np

from llm_tflite.errors import InvalidArgumentError, RuntimeFailure
from llm_tflite.runtime.engine import SequenceEngine
from llm_tflite.runtime.prefill_decode import CALL_COST, PrefillDecodeEngine, Sequence, State
from llm_tflite.runtime.sampling import choose_rows

#: How many tokens a generation's loop runs ahead of its thread (which makes their text): a thread
#: that falls this far behind pauses its generation (and one that stops early, on a stop string or a
#: client leaving, leaves at most this many tokens decoded for nothing).
AHEAD = 4
#: Generations a lane takes before the next lane gets any (``BatchingEngine(lanes=...)``): up to 4 rows
#: decode faster as one call on all the threads than shared over lanes of fewer threads; 8 rows as two
#: lanes of 4 on a thread each. GPT-2 124M ``dynamic_int8`` on 2 cores, rows per second at positions 40
#: / 300 (``benchmarks/batch_step.py --lanes``; ``docs/serve.md``): 4 rows 637-659 / 343-344 as one call
#: against 542-575 / 333-360 on two lanes; 8 rows 590-774 / 312-324 against 942-951 / 432-445.
LANE_SLOTS = 4
#: What the prompt chunks run between two decode steps may cost, in tokens (a chunk: its padded
#: length plus ``CALL_COST``, a read of the weights): five 8-token prompts arriving together in one
#: step (one a step, the 8th client's first token came 8 steps late), a long one a chunk at a time.
PROMPT_TOKENS = 128


class _Job:
    """One call of a sequence: a decode token, or a prompt chunk (``name``). A thread waits for it
    (``done``), or the scheduler's own ``generation`` takes its logits."""

    __slots__ = ("sequence", "tokens", "input_pos", "name", "last", "done", "logits", "error", "generation", "finished")

    def __init__(self, sequence, tokens, input_pos, name=None, last=None, generation=None):
        self.sequence, self.tokens, self.input_pos, self.name, self.last = sequence, tokens, input_pos, name, last
        self.generation = generation
        self.done = None if generation is not None else threading.Event()
        self.logits = self.error = None
        self.finished = False

    def finish(self, logits=None, error=None) -> None:
        self.logits, self.error, self.finished = logits, error, True
        if self.generation is not None:
            self.generation.decoded(logits, error)
        else:
            self.done.set()


class _Generation:
    """A generation whose loop runs in the scheduler thread (``BatchedSequence.generate``): ``step``
    picks its next token and returns the call that feeds it; its thread takes ``(token, end)`` items
    (or an exception) from ``items`` as they come."""

    __slots__ = ("sequence", "logits", "choose", "history", "count", "limit", "stops", "items", "delivered",
                 "taken", "ended", "cancelled", "released", "start", "fed", "resumed", "deferred", "close_after",
                 "history_start", "rng", "states", "lane")

    def __init__(self, sequence, logits, choose, history, limit, stops):
        self.sequence, self.logits, self.choose, self.history = sequence, logits, choose, history
        self.count, self.limit, self.stops = 0, limit, stops
        self.items = queues.SimpleQueue()
        self.delivered = self.taken = 0  # items put / items its thread took
        self.ended = False  # its last item is out
        self.cancelled = False  # its thread stopped (closed early): the scheduler lets it go
        self.released = threading.Event()  # the scheduler no longer touches its sequence
        self.start, self.fed, self.resumed = sequence.position, sequence.fed, 0  # for ``hand_back``
        #: its thread stopped without waiting for the release (``BatchingEngine.stop``): the scheduler
        #: hands the sequence back (and closes it, ``close_after``) when it lets go
        self.deferred = self.close_after = False
        # what a sampler object the caller uses again must not see of the tokens drawn ahead: the history's
        # length, and its generator's state before each draw its thread has not taken yet
        self.history_start = len(history)
        rng = getattr(choose, "rng", None)
        self.rng = rng if isinstance(rng, np.random.Generator) else None
        self.states = collections.deque(maxlen=AHEAD + 2)  # (draw number, the generator's state before it)
        self.lane = None  # the lane whose scheduler runs it (``BatchingEngine.start``)

    def remember(self) -> None:
        """(The scheduler, before this step's draw) keep the generator's state, for ``hand_back``."""
        if self.rng is not None:
            self.states.append((self.delivered, self.rng.bit_generator.state))

    def hand_back(self) -> None:
        """(The sequence no longer in a step) leave it where the plain loop's would be: the tokens
        its thread took but the last fed (``resumed``), and only the feeds that succeeded; the caller's
        history and its sampler's generator as after the last token taken (a sampler object used again
        draws what it would unbatched)."""
        sequence = self.sequence
        kept = min(sequence.position - self.start, self.resumed)
        sequence.position, sequence.fed = self.start + kept, self.fed + kept
        if self.delivered > self.taken:  # drawn ahead: the history and generator as after the last token taken
            del self.history[self.history_start + self.taken:]
            for number, state in self.states:
                if number == self.taken:
                    self.rng.bit_generator.state = state
        if sequence.generation is self:  # no cycle: a sequence dropped gives its caches back at once
            sequence.generation = None

    def let_go(self) -> None:
        """(The scheduler, holding the queue's lock) no step touches its sequence any more."""
        if self.deferred:
            self.hand_back()
            if self.close_after:
                self.sequence._release()
        self.released.set()

    def runnable(self) -> bool:
        return self.delivered - self.taken < AHEAD

    def _put(self, item, end: bool = True) -> None:
        self.ended = end
        self.delivered += 1
        self.items.put(item)

    def step(self, chosen=None):
        """The next token (``Sequence.generate``'s rule), handed to the thread; the ``_Job`` that feeds
        it, or None when the generation ended. ``chosen``: the token ``choose`` gives for these logits
        (or its error), picked with the other rows' (``sampling.choose_rows``)."""
        logits, self.logits = self.logits, None
        try:
            if isinstance(chosen, BaseException):
                raise chosen
            token = int(self.choose(logits, self.history) if chosen is None else chosen)
        except BaseException as e:  # noqa: BLE001 - the generation's thread raises it, as its own loop would
            self._put(e)
            return None
        self.count += 1
        if token in self.stops:
            self._put((None, "stop"))
            return None
        self.history.append(token)
        sequence = self.sequence
        end = "length" if self.count == self.limit else "context" if sequence.position >= sequence.context_length \
            else None
        self._put((token, end), end is not None)
        if end is not None:
            return None
        return _Job(sequence, np.array([[token]], np.int32), np.array([sequence.position], np.int32), generation=self)

    def decoded(self, logits, error) -> None:
        """The call that fed the last token ended: the next step's logits, or its error for the thread."""
        if error is not None:
            self._put(RuntimeFailure(str(error)))
            return
        self.sequence.position += 1
        self.sequence.fed += 1
        self.logits = logits.reshape(-1)  # [vocab], as Sequence.feed_last gives


_gc_state = threading.local()


def _collecting() -> bool:
    """Whether this thread is running a garbage collection (and the finalizers it calls)."""
    return getattr(_gc_state, "active", False)


def _gc_phase(phase: str, info) -> None:
    _gc_state.active = phase == "start"


class _Queue:
    """What the scheduler thread shares with its engine: the waiting calls and the running
    generations. The thread holds the engine only while it runs a step, so a batching runner nobody
    uses any more is freed (and its thread ends)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.decodes: list[_Job] = []
        self.prefills: list[_Job] = []
        self.generations: list[_Generation] = []
        self.closed = False
        self.busy = False  # its scheduler is running a step (``_Lane.idle``)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def take_generations(self) -> list[_Generation]:
        """(Holding ``cond``, between two steps) the generations with a token to pick this step; the
        ended and cancelled ones leave (released: their threads may go on with their sequences)."""
        while True:
            running, ready = [], []
            for generation in self.generations:
                if generation.ended or generation.cancelled:
                    generation.let_go()
                    continue
                running.append(generation)
                if generation.runnable():
                    ready.append(generation)
            self.generations = running
            # a stream collected meanwhile in this thread stopped one of them, and woke nobody
            if not any(generation.cancelled for generation in running):
                return ready


def _fail(jobs, error) -> None:
    for job in jobs:
        job.finish(error=error)


def _schedule(queue: _Queue, engine_ref, lane: int) -> None:
    """The scheduler thread of lane ``lane``: pick its generations' tokens, run them and the other calls
    in a step, and one prompt chunk, repeat. However it ends, every waiting thread is let go."""
    try:
        while True:
            with queue.cond:
                while True:
                    generations = queue.take_generations()
                    if queue.decodes or queue.prefills or generations or queue.closed:
                        break
                    queue.cond.wait()
                if queue.closed:
                    return
                decodes, queue.decodes = queue.decodes, []
                prefills = _prompt_chunks(queue.prefills)
                queue.busy = True
            try:
                engine = engine_ref()
                if engine is None:
                    _fail(decodes + prefills, RuntimeFailure("the batching engine is gone"))
                    return
                _run_step(engine, generations, decodes, prefills, lane)
                del engine, generations, decodes, prefills  # nothing of a finished step while it waits
            finally:
                queue.busy = False
    finally:
        with queue.cond:
            queue.closed = True
            error = RuntimeFailure("the batching engine is closed")
            _fail(queue.decodes + queue.prefills, error)
            for generation in queue.generations:
                if not generation.ended:
                    generation._put(error)
                generation.let_go()
            queue.decodes, queue.prefills, queue.generations = [], [], []


class _Lane:
    """A scheduler thread, the queue it serves, the engine its calls run on (the engine itself, or a twin
    with a share of its threads) and the state its batched calls' unused rows write into."""

    def __init__(self, engine: PrefillDecodeEngine, queue: _Queue, thread: threading.Thread):
        self.engine, self.queue, self.thread = engine, queue, thread
        self.pad = None  # ``BatchingEngine._pad_of``
        self.steps = self.rows = 0  # decode calls run and the sequences' steps they carried

    def idle(self) -> bool:
        """Not in a step, nothing to run (read without the queue's lock: a hint, right by the next step)."""
        queue = self.queue
        return not (queue.busy or queue.generations or queue.decodes or queue.prefills)


def _prompt_chunks(waiting: list[_Job]) -> list[_Job]:
    """Take from ``waiting`` the prompt chunks of one step: the first, then the next ones in order while
    their cost (padded length plus ``CALL_COST``) stays within ``PROMPT_TOKENS``."""
    taken, cost = [], 0
    while waiting and (not taken or cost + waiting[0].tokens.shape[1] + CALL_COST <= PROMPT_TOKENS):
        taken.append(waiting.pop(0))
        cost += taken[-1].tokens.shape[1] + CALL_COST
    return taken


def _run_step(engine, generations, decodes, prefills, lane: int) -> None:
    for generation in generations:
        generation.remember()
    try:  # the built-in samplers' tokens all at once
        chosen = choose_rows([generation.choose for generation in generations],
                             [generation.logits for generation in generations])
    except Exception:  # noqa: BLE001 - each generation's own call then raises it (or not) for its thread
        chosen = [None] * len(generations)
    for generation, token in zip(generations, chosen):  # each one's next token, and the call that feeds it
        try:
            job = generation.step(token)
        except BaseException as e:  # noqa: BLE001 - its thread raises it; the others go on
            generation._put(RuntimeFailure(f"the batching scheduler failed: {type(e).__name__}: {e}"))
            continue
        if job is not None:
            decodes.append(job)
    try:
        engine._step(decodes, prefills, lane)
    except BaseException as e:  # noqa: BLE001 - no waiting thread is left hanging, and the thread goes on
        jobs = [job for job in decodes + prefills if not job.finished]
        _fail(jobs, RuntimeFailure(f"the batching scheduler failed: {type(e).__name__}: {e}"))


class BatchingEngine(SequenceEngine):
    """A ``PrefillDecodeEngine`` whose sequences decode together (see the module docstring).

    Everything but how a sequence's calls run is the wrapped engine's: its signatures, cache
    state, budget and checks.

    Example:
        >>> runner = InterpreterRunner("model.tflite", batching=True)  # doctest: +SKIP
        >>> # complete/stream/chat from several threads now share decode steps
    """

    kind = "prefill_decode (batched)"

    def __init__(self, engine: PrefillDecodeEngine, lanes: int | str = 1):
        """``lanes``: schedulers, each with a compiled model of the file that has ``engine.num_threads //
        lanes`` threads (``PrefillDecodeEngine.twin``), which decode their generations at the same time
        and never wait for each other. A generation joins the first lane with fewer than ``LANE_SLOTS``
        running (else the one with the fewest); a lane while the others are idle computes on
        ``engine``, with all its threads, so one user alone, or up to ``LANE_SLOTS`` together, decode as
        without lanes. Each lane costs the runtime's working memory for the file and a cache for its
        calls' unused rows (two lanes hold about 555 MB more than one for GPT-2 124M at a 1,024-token
        context). 1: one scheduler on ``engine``. ``"auto"``: 2 where they pay (LiteRT's C API, at
        least 2 threads, batches of more than ``LANE_SLOTS`` rows), else 1. Lanes need LiteRT's C API
        (``runtime.native``): the Python wrapper holds the GIL while a model computes, so there they
        are refused."""
        if not isinstance(engine, PrefillDecodeEngine):
            raise InvalidArgumentError(f"batching runs prefill_decode files on the interpreter backend, not a "
                                       f"{engine.kind} engine")
        if not engine.batch_sizes:
            raise InvalidArgumentError("this file has no decode_batch signatures, so its sequences cannot decode "
                                       "together; convert it again with --batch-sizes (e.g. 4,8)")
        native = hasattr(engine.model, "run_bound")
        if lanes == "auto":  # a file batching LANE_SLOTS rows at most serves that many requests (``serve``)
            lanes = 2 if native and engine.num_threads >= 2 and engine.batch_sizes[-1] > LANE_SLOTS else 1
        if not (isinstance(lanes, int) and not isinstance(lanes, bool) and 1 <= lanes <= max(1, engine.num_threads)):
            raise InvalidArgumentError(f"lanes must be 'auto' or an integer from 1 to the engine's threads "
                                       f"({engine.num_threads}), got {lanes!r}")
        if lanes > 1 and not native:
            raise InvalidArgumentError("lanes need LiteRT's C API (libLiteRt.so), which this process does not use "
                                       "(LLM_TFLITE_BINDING=python?); use lanes=1")
        self.inner = engine
        self.max_rows = engine.batch_sizes[-1]
        if _gc_phase not in gc.callbacks:  # ``_collecting``, for ``stop``
            gc.callbacks.append(_gc_phase)
        engines = [engine] if lanes == 1 else [engine.twin(engine.num_threads // lanes) for _ in range(lanes)]
        self._lanes = []
        for number, lane_engine in enumerate(engines):
            queue = _Queue()
            weakref.finalize(self, queue.close)
            thread = threading.Thread(target=_schedule, args=(queue, weakref.ref(self), number),
                                      name="llm-tflite-batching" + (f"-{number}" if number else ""), daemon=True)
            self._lanes.append(_Lane(lane_engine, queue, thread))
        self._threads = frozenset(lane.thread for lane in self._lanes)
        for lane in self._lanes:
            lane.thread.start()

    def __getattr__(self, name):  # the wrapped engine's signatures, state and checks
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def context_length(self):
        return self.inner.context_length

    def sequence(self, observer=None) -> "BatchedSequence":
        return BatchedSequence(self, observer)

    @property
    def lanes(self) -> int:
        """Schedulers with a compiled model each (1: one, on the engine)."""
        return len(self._lanes)

    @property
    def steps(self) -> int:
        """Decode calls run (``serve``'s metrics: the mean batch)."""
        return sum(lane.steps for lane in self._lanes)

    @property
    def rows(self) -> int:
        """The sequences' steps those calls carried."""
        return sum(lane.rows for lane in self._lanes)

    def close(self) -> None:
        """Stop the scheduler threads (calls waiting and new ones fail with ``RuntimeFailure``)."""
        for lane in self._lanes:
            lane.queue.close()
        for lane in self._lanes:
            lane.thread.join(timeout=10)

    def reserve(self, count: int) -> None:
        """Cache buffers for ``count`` sequences and the batched calls' unused rows, made now (``serve``
        does at start: the first requests to arrive together would otherwise each allocate and zero a
        cache, 75 MB for GPT-2 124M, in the middle of the others' steps)."""
        for lane in self._lanes:
            self._pad_of(lane)
        self.inner.reserve(count)

    def _lane_for(self, sequence) -> _Lane:
        """The lane a sequence's work joins: its running generation's, else the first with fewer than
        ``LANE_SLOTS`` generations, else the one with the fewest (read without locks: a hint)."""
        generation = getattr(sequence, "generation", None)
        if generation is not None and generation.lane is not None and not generation.released.is_set():
            return generation.lane
        counts = [len(lane.queue.generations) for lane in self._lanes]
        return next((lane for lane, n in zip(self._lanes, counts) if n < LANE_SLOTS),
                    self._lanes[counts.index(min(counts))])

    def _in_scheduler(self) -> bool:
        return threading.current_thread() in self._threads

    # -- what a sequence calls ---------------------------------------------------------
    def run(self, job: _Job) -> np.ndarray:
        queue = self._lane_for(job.sequence).queue
        with queue.cond:
            if queue.closed:
                raise RuntimeFailure("the batching engine is closed")
            (queue.decodes if job.name is None else queue.prefills).append(job)
            queue.cond.notify_all()
        job.done.wait()
        if job.error is not None:  # one error object is shared by a call's rows: each raises its own
            raise RuntimeFailure(str(job.error)) from None
        return job.logits

    def start(self, generation: _Generation) -> None:
        """Run ``generation``'s loop in a lane's scheduler from its next step on."""
        lane = self._lane_for(generation.sequence)  # an earlier generation of it not yet let go: its lane
        queue = lane.queue
        with queue.cond:
            if queue.closed:
                raise RuntimeFailure("the batching engine is closed")
            generation.lane = lane
            queue.generations.append(generation)
            queue.cond.notify_all()

    def took(self, generation: _Generation) -> None:
        """``generation``'s thread took an item: a generation that ran ``AHEAD`` may go on."""
        cond = generation.lane.queue.cond
        with cond:
            generation.taken += 1
            cond.notify_all()

    def stop(self, generation: _Generation) -> None:
        """``generation``'s thread is done with it: wait until its scheduler lets it go (at most the step
        running now), so its sequence's caches are the thread's again, and hand the sequence back.

        A stream collected by the garbage collector stops wherever a collection runs: in a scheduler
        thread, or in a thread holding a lock a scheduler needs (a queue's, the engine's, a
        sampler's), where waiting would never end. Then it does not wait: the scheduler hands the
        sequence back when it lets go (and closes it, if it was closed meanwhile; ``BatchedSequence.close``)."""
        cond = generation.lane.queue.cond
        with cond:
            generation.cancelled = True
            if not generation.released.is_set() and (_collecting() or self._in_scheduler()):
                generation.deferred = True
                cond.notify_all()
                return
            cond.notify_all()
        generation.released.wait()  # a closed queue's scheduler lets go once its running step is over
        generation.hand_back()

    def close_sequence(self, sequence: "BatchedSequence") -> bool:
        """Whether ``sequence``'s caches wait for the scheduler to let its last generation go (a stream
        collected mid-step, ``stop``): then it gives them back then."""
        generation = sequence.generation
        if generation is None or not generation.deferred:
            return False
        with generation.lane.queue.cond:
            if generation.released.is_set():
                return False
            generation.close_after = True
            return True

    # -- in a scheduler thread ---------------------------------------------------------
    def _step(self, decodes: list[_Job], prefills: list[_Job], number: int) -> None:
        """Lane ``number``'s step: on its own engine, or on the engine's with all its threads while the
        other lanes are idle."""
        lane = self._lanes[number]
        alone = all(other is lane or other.idle() for other in self._lanes)
        engine = self.inner if alone else lane.engine
        lane.rows += len(decodes)
        for group in self._calls(decodes):
            for start in range(0, len(group), self.max_rows):
                lane.steps += 1
                self._decode(group[start : start + self.max_rows], engine, lane)
        for prefill in prefills:
            self._finish([prefill], lambda: [engine.call(prefill.name, dict(
                tokens=prefill.tokens, input_pos=prefill.input_pos, last=prefill.last,
                caches=prefill.sequence.caches)).get("logits")])

    def _calls(self, jobs: list[_Job]) -> list[list[_Job]]:
        """The decode calls of one step. A call attends over the batched window of its furthest row, so
        rows are grouped by window, and a group joins the next larger window's call only when the
        extra attention costs less than another read of the weights (bytes moved: each row reads its
        window of every cache about three times, copy and product; a call reads the model once).
        7 rows at position 20 and 1 at 700 on GPT-2 124M: 143 ms of CPU as two calls, 291 ms as one."""
        inner = self.inner
        window = {id(job): inner.batch_window(int(job.input_pos[0])) or inner.context_length for job in jobs}
        groups = {}
        for job in jobs:
            groups.setdefault(window[id(job)], []).append(job)
        calls, carried = [], []
        widths = sorted(groups)
        for i, width in enumerate(widths):
            carried += groups[width]
            following = widths[i + 1] if i + 1 < len(widths) else None
            # each row reads the extra slots of every cache about three times (copy and product)
            if following is None or \
                    len(carried) * 3 * (inner.cache_bytes(following) - inner.cache_bytes(width)) >= inner.model_bytes:
                calls.append(carried)
                carried = []
        return calls

    def _pad_of(self, lane: _Lane) -> State:
        """The state ``lane``'s batched calls' unused rows write into: one a lane, as lanes run at once."""
        if lane.pad is None:
            lane.pad = self.inner.new_state()
        return lane.pad

    def _decode(self, jobs: list[_Job], engine: PrefillDecodeEngine, lane: _Lane) -> None:
        """One decode call of ``jobs``' rows on ``engine`` (the engine or ``lane``'s twin)."""
        if len(jobs) == 1:  # alone: the single-sequence signature
            job = jobs[0]
            name = engine.decode_signature(int(job.input_pos[0]))
            self._finish(jobs, lambda: [engine.call(name, dict(tokens=job.tokens, input_pos=job.input_pos,
                                                              caches=job.sequence.caches))["logits"]])
            return
        pad = self._pad_of(lane)
        self._finish(jobs, lambda: engine.decode_rows(
            [job.sequence.caches for job in jobs], [int(job.tokens[0, 0]) for job in jobs],
            [int(job.input_pos[0]) for job in jobs], pad))

    @staticmethod
    def _finish(jobs: list[_Job], compute) -> None:
        try:
            results = compute()
        except BaseException as e:  # noqa: BLE001 - the waiting threads raise it
            _fail(jobs, e if isinstance(e, RuntimeFailure) else RuntimeFailure(f"a batched call failed: {e}"))
            return
        for job, logits in zip(jobs, results):
            job.finish(logits)


class BatchedSequence(Sequence):
    """A ``Sequence`` whose calls, and generation loop, run on its ``BatchingEngine``'s scheduler thread."""

    def __init__(self, batching: BatchingEngine, observer=None):
        super().__init__(batching.inner, observer)
        self.batching = batching
        self.generation = None  # the last one started on it

    def fork(self) -> "BatchedSequence":
        twin = super().fork()
        twin.batching, twin.generation = self.batching, None
        return twin

    def close(self) -> None:
        self._settle()
        if not self.batching.close_sequence(self):
            super().close()

    def _check_open(self) -> None:
        self._settle()
        super()._check_open()

    def _settle(self) -> None:
        """A stream of this sequence collected mid-step (``BatchingEngine.stop``, deferred): wait until the
        scheduler hands the sequence back, unless this is such a collection (or the scheduler) again."""
        generation = self.generation
        if generation is not None and generation.deferred and not _collecting() \
                and not self.batching._in_scheduler():
            generation.released.wait()

    def generate(self, logits, choose, history: list, limit: int, stops):
        """``Sequence.generate``, its loop in the scheduler thread: the tokens come as the steps pick them
        (at most ``AHEAD`` ahead of this thread). Closed early, the sequence holds what the plain loop's
        would (the tokens fed after the last one taken are forgotten)."""
        if self.observer is not None:  # calibration sees every call: the plain loop, directly
            yield from super().generate(logits, choose, history, limit, stops)
            return
        self._check_open()
        if limit < 1:  # as the plain loop: nothing to pick
            return
        generation = _Generation(self, logits.reshape(-1), choose, history, limit, stops)
        self.batching.start(generation)
        self.generation = generation
        try:
            while True:
                item = generation.items.get()
                self.batching.took(generation)
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item[1] is not None:
                    return
                generation.resumed += 1  # the plain loop would feed this token now
        finally:
            self.batching.stop(generation)

    def _run(self, name: str, tokens, input_pos, hidden: bool, last=None) -> dict:
        if hidden or self.observer is not None:  # contrastive search, calibration: directly, under the engine's lock
            return super()._run(name, tokens, input_pos, hidden, last)
        job = _Job(self, tokens, input_pos, None if tokens.shape[1] == 1 else name, last)
        return {"logits": self.batching.run(job)}
