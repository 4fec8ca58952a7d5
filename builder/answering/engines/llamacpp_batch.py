"""Concurrent answers of the llama.cpp engine generated together (continuous batching).

    batcher = Batcher(llama, parallel=8, n_ctx=4096, end_ids={1, 106}, penalty=1.1,
                      prefixes=PrefixStates(llama))
    for token_id in batcher.tokens(prompt_ids, 64, 0.0, 0.9, None, flags, None): ...

One scheduler thread owns a llama.cpp context of `parallel` sequences (parallel x n_ctx
tokens of KV cache, a separate stream per sequence, so a sequence's attention reads the cells
it would read alone). Each step it decodes one batch: the next token of every answer that is
generating, then chunks of the prompts that arrived (at most PREFILL_STEP tokens while others
generate, so a long new prompt holds them up for a fraction of a second). An answer that ends
(end token, token limit, loop, stop event, a reader that left) leaves at once and its cells are
removed; a waiting prompt takes its sequence at the next step. The thread ends when no answer
is left and starts again with the next.

Tokens are picked here from each answer's row of logits (numpy), as the one-at-a-time path
picks them: the repetition penalty on the answer's own tokens, then the greedy argmax, or
top-p on the softmax followed by the temperature, as llama.cpp's sampler chain orders them.
A prompt starting as a kept prefix state does (`PrefixStates`, `warm`) is read from there.
"""

import queue
import threading
from collections import deque

import llama_cpp
import numpy as np

from builder.answering.guard import runaway

PREFILL_STEP = 256  # prompt tokens read per step while other answers generate (~0.5 s, 2 cores)
TOP_CANDIDATES = 1024  # top-p looks at the most likely tokens first (a full sort is 20 ms)


class Answer:
    """One answer: its prompt, what of it is in the KV cache, the tokens generated, and the
    queue its reader takes (token, reason it ends or None) from."""

    def __init__(self, prompt: list[int], max_new_tokens: int, temperature: float,
                 top_p: float, stop_event, warm_only: bool = False):
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.temperature, self.top_p, self.stop_event = temperature, top_p, stop_event
        self.warm_only = warm_only  # read the prompt, keep its state, generate nothing
        self.rng = np.random.default_rng() if temperature > 0 else None
        self.seq_id: int | None = None
        self.n_past = 0  # tokens of this sequence in the KV cache
        self.pending: int | None = None  # the last token picked, not yet decoded
        self.generated: list[int] = []
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.left = False  # the reader closed the stream

    def reading(self) -> bool:
        return self.pending is None and self.n_past < len(self.prompt)

    def why_end(self, token: int, end_ids: set[int], n_ctx: int) -> str | None:
        """Why the answer ends after `token` ("end", "cut", "runaway", "stop"), else None:
        the checks and their order of the one-at-a-time path."""
        if token in end_ids:
            return "end"
        if len(self.generated) >= self.max_new_tokens or self.n_past >= n_ctx:
            return "cut"  # the token limit (or the sequence's context), not the model
        if runaway(self.generated):
            return "runaway"
        if self.stop_event is not None and self.stop_event.is_set():
            return "stop"
        return None


def penalize(scores: np.ndarray, generated, penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor on one row of logits, in place: the
    tokens the answer generated lose `penalty` (a logit below 0 is multiplied, above divided)."""
    seen = np.unique(np.asarray(generated, dtype=np.int64))
    if seen.size:
        picked = scores[seen]
        scores[seen] = np.where(picked < 0, picked * penalty, picked / penalty)
    return scores


def pick(logits: np.ndarray, answer: Answer, penalty: float) -> int:
    """The next token from one row of logits (float32, changed in place)."""
    if penalty > 1:
        penalize(logits, answer.generated, penalty)
    if answer.temperature <= 0:
        return int(np.argmax(logits))
    # llama.cpp's chain: top-p on the softmax at temperature 1, then the temperature, then draw
    top = np.argpartition(logits, -TOP_CANDIDATES)[-TOP_CANDIDATES:] \
        if logits.size > TOP_CANDIDATES else np.arange(logits.size)
    shifted = np.exp(logits - logits.max(), dtype=np.float64)
    order = top[np.argsort(-logits[top], kind="stable")]
    mass = np.cumsum(shifted[order]) / shifted.sum()
    if mass[-1] < answer.top_p:  # the candidates hold too little: all of them, sorted
        order = np.argsort(-logits, kind="stable")
        mass = np.cumsum(shifted[order]) / shifted.sum()
    kept = order[:int(np.searchsorted(mass, answer.top_p)) + 1]
    weights = np.exp((logits[kept] - logits[kept[0]]) / answer.temperature, dtype=np.float64)
    return int(answer.rng.choice(kept, p=weights / weights.sum()))


class Batcher:
    """The context, the scheduler thread and the answers it serves."""

    def __init__(self, llama, parallel: int, n_ctx: int, end_ids: set[int], penalty: float,
                 prefixes):
        self.llama, self.parallel, self.n_ctx = llama, parallel, n_ctx
        self.end_ids, self.penalty, self.prefixes = end_ids, penalty, prefixes
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
        params.n_ctx, params.n_seq_max, params.kv_unified = parallel * n_ctx, parallel, False
        self.ctx = llama_cpp.llama_init_from_model(llama._model.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context of {parallel} x {n_ctx} "
                               f"tokens")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_batch = params.n_batch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.n_vocab = llama.n_vocab()
        self.free = list(range(parallel))  # sequence ids
        self.waiting: deque[Answer] = deque()
        self.running: list[Answer] = []
        self.changed = threading.Condition()
        self.thread: threading.Thread | None = None
        llama._model._exit_stack.callback(self.close)  # freed before the model, as Llama's own

    def close(self) -> None:
        """Free the context."""
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    # The readers' side

    def tokens(self, prompt: list[int], max_new_tokens: int, temperature: float, top_p: float,
               stop_event, flags, generated_ids: list[int] | None):
        """The answer's token ids as the scheduler picks them; the flags are set as the
        one-at-a-time path sets them (once the reader asks past the last token)."""
        answer = Answer(prompt, max_new_tokens, temperature, top_p, stop_event)
        self.submit(answer)
        try:
            while True:
                item = answer.out.get()
                if isinstance(item, BaseException):
                    raise item
                token, reason = item
                if generated_ids is not None:
                    generated_ids.append(token)
                yield token
                if reason in ("cut", "runaway") and flags is not None:
                    setattr(flags, reason, True)
                if reason is not None:
                    return
        finally:
            answer.left = True
            with self.changed:
                self.changed.notify()

    def warm(self, prompt: list[int]) -> None:
        """Read `prompt` into a free sequence and keep its state (waits its turn)."""
        answer = Answer(prompt, 0, 0.0, 1.0, None, warm_only=True)
        self.submit(answer)
        if isinstance(item := answer.out.get(), BaseException):
            raise item

    def submit(self, answer: Answer) -> None:
        with self.changed:
            self.waiting.append(answer)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="llama-batch",
                                               daemon=True)
                self.thread.start()
            self.changed.notify()

    # The scheduler's side

    def _run(self) -> None:
        try:
            while True:
                with self.changed:
                    for answer in [a for a in self.running if a.left]:
                        self._finish(answer, keep=True)
                    while self.free and self.waiting:
                        if not (answer := self.waiting.popleft()).left:
                            self._admit(answer)
                    if not self.running:
                        self.thread = None
                        return
                self._step()
        except BaseException as err:  # noqa: BLE001 (every reader gets it; none waits forever)
            with self.changed:
                for answer in list(self.running) + list(self.waiting):
                    answer.out.put(err)
                    if answer in self.running:
                        llama_cpp.llama_memory_seq_rm(self.memory, answer.seq_id, -1, -1)
                        self.running.remove(answer)
                        self.free.append(answer.seq_id)
                self.waiting.clear()
                self.thread = None  # the next answer starts the scheduler again

    def _admit(self, answer: Answer) -> None:
        """Give `answer` a sequence, started from the closest kept prefix state if any."""
        answer.seq_id = self.free.pop()
        self.running.append(answer)
        key, shared = self.prefixes.closest(answer.prompt)
        if key is not None and self.prefixes.load(key, self.ctx, answer.seq_id):
            # the last prompt token is read again when all of it is kept: its logits
            answer.n_past = min(shared, len(answer.prompt) - 1)
            llama_cpp.llama_memory_seq_rm(self.memory, answer.seq_id, answer.n_past, -1)

    def _finish(self, answer: Answer, keep: bool = False) -> None:
        """Remove the answer and its cells (kept as a prefix state first if `keep`)."""
        if keep:
            held = tuple(answer.prompt + answer.generated)[:answer.n_past]
            self.prefixes.keep(held, self.ctx, answer.seq_id)
        llama_cpp.llama_memory_seq_rm(self.memory, answer.seq_id, -1, -1)
        self.running.remove(answer)
        self.free.append(answer.seq_id)

    def _step(self) -> None:
        """Decode one batch: every generating answer's next token, then prompt chunks."""
        batch, rows = self.batch, []
        batch.n_tokens = 0
        generating = [a for a in self.running if a.pending is not None]
        decoded = list(generating)
        for answer in generating:
            self._add(answer.pending, answer, True)
            rows.append((answer, batch.n_tokens - 1))
        room = self.n_batch - batch.n_tokens
        if generating:
            room = min(room, PREFILL_STEP)
        for answer in [a for a in self.running if a.reading()]:
            if room == 0:
                break
            chunk = answer.prompt[answer.n_past:answer.n_past + room]
            last = answer.n_past + len(chunk) == len(answer.prompt)
            for i, token in enumerate(chunk):
                self._add(token, answer, last and i == len(chunk) - 1)
            room -= len(chunk)
            decoded.append(answer)
            if last:
                rows.append((answer, batch.n_tokens - 1))
        code = llama_cpp.llama_decode(self.ctx, batch)
        with self.changed:
            if code != 0:
                self._fail(decoded)
                return
            for answer, row in rows:
                self._pick(answer, row)

    def _add(self, token: int, answer: Answer, logits: bool) -> None:
        batch, i = self.batch, self.batch.n_tokens
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, answer.n_past, 1
        batch.seq_id[i][0], batch.logits[i] = answer.seq_id, logits
        batch.n_tokens += 1
        answer.n_past += 1
        answer.pending = None

    def _pick(self, answer: Answer, row: int) -> None:
        """The answer's next token from its row of logits, handed to its reader."""
        if answer.warm_only:
            self._finish(answer, keep=True)
            answer.out.put(None)
            return
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, row)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()
        token = pick(logits, answer, self.penalty)
        answer.generated.append(token)
        reason = answer.why_end(token, self.end_ids, self.n_ctx)
        answer.out.put((token, reason))
        if reason is not None:
            self._finish(answer, keep=True)
        else:
            answer.pending = token

    def _fail(self, answers: list[Answer]) -> None:
        """llama.cpp refused the batch: its answers end with the error."""
        error = RuntimeError("llama.cpp could not decode the batch (llama_decode failed)")
        for answer in answers:
            answer.out.put(error)
            self._finish(answer)
