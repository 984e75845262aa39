"""Continuous batching: the decode steps of concurrent generations run as one batched call.

On a CPU a decode step is bound by reading the weights; a ``decode_batch_{B}`` signature
(``Converter(batch_sizes=...)``) reads them once for ``B`` sequences. ``BatchingEngine`` wraps a
``PrefillDecodeEngine``: every generation keeps its own thread, sampler, seed, stop rules,
filters and chat state, exactly as without batching; only its ``Sequence``'s calls go through
one scheduler thread, which

- gathers the decode steps of every running sequence and runs them as ``decode_rows`` calls:
  one, unless rows far apart in the context cost less as a call per decode window
  (``_calls``), and at most the largest batch the file has per call;
- runs the next chunk of waiting prompts between two decode steps, as many prompts' as fit
  ``PROMPT_TOKENS`` (at least one; a chunk costs its length plus a read of the weights), so a
  long prompt joining never stalls the streams already running, and clients arriving together
  all get their first token within a step or two;
- waits for the sequences of the last step to come back (each samples its token in its own
  thread) at most ``gather_seconds``: a sequence that finished (``Sequence.idle``) or is slow
  to come back is not waited for, and joins the next step when it is back.

Decoding a sequence in a batch gives the same logits as decoding it alone (each row has its
own caches and position; checked bit for bit in ``tests/test_batching.py``).
"""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np

from llm_tflite.errors import InvalidArgumentError, RuntimeFailure
from llm_tflite.runtime.engine import SequenceEngine
from llm_tflite.runtime.prefill_decode import CALL_COST, PrefillDecodeEngine, Sequence

#: How long a step waits for the sequences of the step before it to come back with their tokens.
GATHER_SECONDS = 0.02
#: What the prompt chunks run between two decode steps may cost, in tokens (a chunk: its padded
#: length plus ``CALL_COST``, a read of the weights): five 8-token prompts arriving together in one
#: step (one a step, the 8th client's first token came 8 steps late), a long one a chunk at a time.
PROMPT_TOKENS = 128


class _Job:
    """One call a sequence waits for: a decode token, or a prompt chunk (``name``)."""

    __slots__ = ("sequence", "tokens", "input_pos", "name", "last", "done", "logits", "error")

    def __init__(self, sequence, tokens, input_pos, name=None, last=None):
        self.sequence, self.tokens, self.input_pos, self.name, self.last = sequence, tokens, input_pos, name, last
        self.done = threading.Event()
        self.logits = self.error = None


class _Queue:
    """What the scheduler thread shares with its engine: the waiting calls. The thread holds the
    engine only while it runs a step, so a batching runner nobody uses any more is freed (and its
    thread ends)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.decodes: list[_Job] = []
        self.prefills: list[_Job] = []
        self.expected: set = set()  # ids of the sequences of the last decode step, not yet back
        self.closed = False

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def _fail(jobs, error) -> None:
    for job in jobs:
        job.error = error
        job.done.set()


def _schedule(queue: _Queue, engine_ref, gather_seconds: float) -> None:
    """The scheduler thread: gather the decode steps, run them and one prompt chunk, repeat."""
    while True:
        with queue.cond:
            while not (queue.decodes or queue.prefills or queue.closed):
                queue.cond.wait()
            if queue.closed:
                _fail(queue.decodes + queue.prefills, RuntimeFailure("the batching engine is closed"))
                return
            deadline = time.monotonic() + gather_seconds
            while queue.expected - {id(job.sequence) for job in queue.decodes} and not queue.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                queue.cond.wait(left)
            decodes, queue.decodes = queue.decodes, []
            prefills = _prompt_chunks(queue.prefills)
            # only a generation's sequences come straight back (a beam's forks, a logits() call do not)
            queue.expected = {id(job.sequence) for job in decodes if job.sequence.generating}
        engine = engine_ref()
        if engine is None:
            _fail(decodes + prefills, RuntimeFailure("the batching engine is gone"))
            return
        _run_step(engine, decodes, prefills)
        del engine, decodes, prefills  # nothing of a finished step (jobs hold their sequences) while it waits


def _prompt_chunks(waiting: list[_Job]) -> list[_Job]:
    """Take from ``waiting`` the prompt chunks of one step: the first, then the next ones in order while
    their cost (padded length plus ``CALL_COST``) stays within ``PROMPT_TOKENS``."""
    taken, cost = [], 0
    while waiting and (not taken or cost + waiting[0].tokens.shape[1] + CALL_COST <= PROMPT_TOKENS):
        taken.append(waiting.pop(0))
        cost += taken[-1].tokens.shape[1] + CALL_COST
    return taken


def _run_step(engine, decodes, prefills) -> None:
    try:
        engine._step(decodes, prefills)
    except BaseException as e:  # noqa: BLE001 - no waiting thread is left hanging, and the thread goes on
        jobs = [job for job in decodes + prefills if not job.done.is_set()]
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

    def __init__(self, engine: PrefillDecodeEngine, *, gather_seconds: float = GATHER_SECONDS):
        if not isinstance(engine, PrefillDecodeEngine):
            raise InvalidArgumentError(f"batching runs prefill_decode files on the interpreter backend, not a "
                                       f"{engine.kind} engine")
        if not engine.batch_sizes:
            raise InvalidArgumentError("this file has no decode_batch signatures, so its sequences cannot decode "
                                       "together; convert it again with --batch-sizes (e.g. 4,8)")
        self.inner = engine
        self.max_rows = engine.batch_sizes[-1]
        self._pad = None  # cache buffers the unused rows of a batched call write into
        #: Decode calls run and the sequences' steps they carried (``serve``'s metrics: the mean batch).
        self.steps = self.rows = 0
        self._queue = _Queue()
        weakref.finalize(self, self._queue.close)
        self._thread = threading.Thread(target=_schedule, args=(self._queue, weakref.ref(self), gather_seconds),
                                        name="llm-tflite-batching", daemon=True)
        self._thread.start()

    def __getattr__(self, name):  # the wrapped engine's signatures, state and checks
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def context_length(self):
        return self.inner.context_length

    def sequence(self, observer=None) -> "BatchedSequence":
        return BatchedSequence(self, observer)

    def close(self) -> None:
        """Stop the scheduler thread (calls waiting and new ones fail with ``RuntimeFailure``)."""
        self._queue.close()
        self._thread.join(timeout=10)

    # -- what a sequence calls ---------------------------------------------------------
    def run(self, job: _Job) -> np.ndarray:
        queue = self._queue
        with queue.cond:
            if queue.closed:
                raise RuntimeFailure("the batching engine is closed")
            (queue.decodes if job.name is None else queue.prefills).append(job)
            queue.cond.notify_all()
        job.done.wait()
        if job.error is not None:  # one error object is shared by a call's rows: each raises its own
            raise RuntimeFailure(str(job.error)) from None
        return job.logits

    def idle(self, sequence) -> None:
        """``sequence`` will not be fed for now: the next step does not wait for it."""
        with self._queue.cond:
            self._queue.expected.discard(id(sequence))
            self._queue.cond.notify_all()

    # -- in the scheduler thread ---------------------------------------------------------
    def _step(self, decodes: list[_Job], prefills: list[_Job]) -> None:
        for group in self._calls(decodes):
            for start in range(0, len(group), self.max_rows):
                self._decode(group[start : start + self.max_rows])
        for prefill in prefills:
            self._finish([prefill], lambda: [self.inner.call(prefill.name, dict(
                tokens=prefill.tokens, input_pos=prefill.input_pos, last=prefill.last,
                caches=prefill.sequence.caches)).get("logits")])

    def _calls(self, jobs: list[_Job]) -> list[list[_Job]]:
        """The decode calls of one step. A call attends over the decode window of its furthest row, so
        rows are grouped by window, and a group joins the next larger window's call only when the
        extra attention costs less than another read of the weights (bytes moved: each row reads its
        window of every cache about three times, copy and product; a call reads the model once).
        7 rows at position 20 and 1 at 700 on GPT-2 124M: 143 ms of CPU as two calls, 291 ms as one."""
        inner = self.inner
        window = {id(job): inner.decode_window(int(job.input_pos[0])) or inner.context_length for job in jobs}
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

    def _decode(self, jobs: list[_Job]) -> None:
        self.steps += 1
        self.rows += len(jobs)
        if len(jobs) == 1:  # alone: the single-sequence signature
            job = jobs[0]
            name = self.inner.decode_signature(int(job.input_pos[0]))
            self._finish(jobs, lambda: [self.inner.call(name, dict(tokens=job.tokens, input_pos=job.input_pos,
                                                                   caches=job.sequence.caches))["logits"]])
            return
        if self._pad is None:
            self._pad = self.inner.new_state()
        self._finish(jobs, lambda: self.inner.decode_rows(
            [job.sequence.caches for job in jobs], [int(job.tokens[0, 0]) for job in jobs],
            [int(job.input_pos[0]) for job in jobs], self._pad))

    @staticmethod
    def _finish(jobs: list[_Job], compute) -> None:
        try:
            results = compute()
        except BaseException as e:  # noqa: BLE001 - the waiting threads raise it
            _fail(jobs, e if isinstance(e, RuntimeFailure) else RuntimeFailure(f"a batched call failed: {e}"))
            return
        for job, logits in zip(jobs, results):
            job.logits = logits
            job.done.set()


class BatchedSequence(Sequence):
    """A ``Sequence`` whose calls run on its ``BatchingEngine``'s scheduler thread."""

    def __init__(self, batching: BatchingEngine, observer=None):
        super().__init__(batching.inner, observer)
        self.batching = batching
        #: In a generation's loop (``start_generation`` until ``idle``): a step waits for its next token.
        self.generating = False

    def fork(self) -> "BatchedSequence":
        twin = super().fork()
        twin.batching, twin.generating = self.batching, False
        return twin

    def start_generation(self) -> None:
        self.generating = True

    def idle(self) -> None:
        self.generating = False
        self.batching.idle(self)

    def _run(self, name: str, tokens, input_pos, hidden: bool, last=None) -> dict:
        if hidden or self.observer is not None:  # contrastive search, calibration: directly, under the engine's lock
            return super()._run(name, tokens, input_pos, hidden, last)
        job = _Job(self, tokens, input_pos, None if tokens.shape[1] == 1 else name, last)
        return {"logits": self.batching.run(job)}
