"""The llama.cpp engine: the GGUF that `builder export` wrote, in this process
(llama-cpp-python).

    builder export runs/NAME --format gguf            # -> runs/NAME/gguf/NAME-f16.gguf
    builder chat runs/NAME --use gguf                  # the same bot, generating in llama.cpp
    builder serve runs/NAME --use gguf [--warm]

The prompt is tokenized by the GGUF's own tokenizer (BOS added, as training did); generation is
greedy at temperature 0 and stops at the end tokens the export recorded, at the template's
stop markers and at a repeating loop. The repetition penalty is applied as transformers applies
it (only to tokens the answer generated, never to the FAQ block in the prompt), so a GGUF at
f16 answers what the merged model answers. Needs the `gguf` extra (llama-cpp-python).
$BUILDER_LLAMA_THREADS sets the threads llama.cpp uses (default: every core).

Concurrent answers can be generated together (`parallel` N > 1; llamacpp_batch.Batcher): one
scheduler thread decodes, each step, the next token of every running answer and a chunk of the
prompts that arrived, in one llama.cpp batch. At f16 an answer is token for token the one
generated alone. `parallel=1` generates one answer at a time in the Llama object, under a lock:
the default on CPU, where a batch of 8 costs about 8 single steps (gemma's 262k-token output
layer is compute-bound) and batching only moved first tokens earlier and last ones later
(bench/serve_bench.py, 2 cores: 37.7 tokens/s one at a time, 31.8 batched). A llama.cpp built
with GPU support puts every layer on the GPU and batches 8 by default.

Most of an idle server's first-token time is llama.cpp reading the prompt (~450 tokens/s on 2
cores). Prompts whose first FAQ entry is the same share their start, so the KV state of recent
prompts is kept (`PrefixStates`): a new prompt is read only from where it parts from the
closest one. `warm(prompts)` keeps one state per prompt, so even a first question starts there.
"""

import ctypes
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from builder.answering.decoding import answer_deltas
from builder.answering.guard import runaway
from builder.errors import UserError

THREADS_ENV = "BUILDER_LLAMA_THREADS"  # threads llama.cpp uses (default: every core)
N_CTX = 4096  # tokens of prompt + answer; a FAQ prompt with 3 entries is a few hundred
GPU_PARALLEL = 8  # answers generated together on a GPU (each with N_CTX tokens of KV cache)
TOKENIZER_CTX = 256  # the Llama object's own context when answers are generated in batches
PREFIX_MIN = 32  # shared tokens worth restoring a kept state for (a lone header is ~6)
PREFIX_BYTES = 512 * 2**20  # KV states kept in all; gemma-3-270m holds 18 KB per token
INSTALL = ("llama-cpp-python is not installed: pip install -e '.[gguf]' (it builds llama.cpp, "
           "about 5 minutes on 2 cores, once per machine)")


def import_llama():
    try:
        import llama_cpp
    except ImportError:
        raise UserError(INSTALL) from None
    return llama_cpp


def llama_threads() -> int:
    """The threads llama.cpp uses: $BUILDER_LLAMA_THREADS, else every core (on a machine other
    work keeps busy fewer are faster: llama.cpp's threads spin while they wait; 334 prompt
    tokens took 4.2 s on 2 threads, 1.4 s on 1, with two other processes running on 2 cores)."""
    return int(os.environ.get(THREADS_ENV) or 0) or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def gpu_offload() -> bool:
    """Whether this llama.cpp was built with GPU support (CUDA, Metal, Vulkan, ...)."""
    return bool(import_llama().llama_supports_gpu_offload())


def default_parallel() -> int:
    """Answers generated together by default: GPU_PARALLEL on a GPU, 1 on CPU."""
    return GPU_PARALLEL if gpu_offload() else 1


def load_llama(path: Path, n_ctx: int = N_CTX):
    llama_cpp = import_llama()
    threads = llama_threads()
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                           n_threads_batch=threads, n_gpu_layers=-1 if gpu_offload() else 0,
                           verbose=False)


def shared_length(a, b) -> int:
    """How many tokens two token sequences share from their start."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixStates:
    """The llama.cpp KV state of recent prompts (one sequence's cells, no logits), newest
    last, within a byte budget. llama-cpp-python reuses what is still in its context by itself;
    this keeps more than the last prompt. Used under the bot's lock (one at a time) or by the
    batch scheduler's thread."""

    def __init__(self, llama, budget: int = PREFIX_BYTES):
        self.llama, self.budget = llama, budget
        self.states: OrderedDict[tuple, bytes] = OrderedDict()
        self.size = 0
        self.restored = 0  # prompts started from a kept state
        # a kept state holds a sliding-window layer's cells of the window before its last
        # token only: it can be cut back (to where a prompt parts from it) if it is no longer
        # than the window; a longer one only continued (gemma3: 512 tokens)
        self.window = next((int(value) for key, value in llama.metadata.items()
                            if key.endswith(".attention.sliding_window")), None)

    def keep(self, key: tuple, ctx, seq_id: int) -> None:
        """Keep the state of sequence `seq_id` of llama.cpp context `ctx`, which holds the
        tokens `key`."""
        import llama_cpp

        if len(key) < PREFIX_MIN or key in self.states:
            return
        size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, seq_id)
        if not written or written > self.budget:
            return
        self.states[key] = bytes(buffer)[:written]
        self.size += written
        while self.size > self.budget:
            self.size -= len(self.states.popitem(last=False)[1])

    def closest(self, prompt: list[int], floor: int = PREFIX_MIN - 1) -> tuple[tuple | None, int]:
        """The kept key sharing the longest start with `prompt` (more than `floor` tokens),
        and the tokens shared; (None, floor) when none does."""
        best, length = None, floor
        for key in self.states:
            n = shared_length(key, prompt)
            if n > length and (n == len(key) or self.window is None or len(key) <= self.window):
                best, length = key, n
        return best, length

    def load(self, key: tuple, ctx, seq_id: int) -> bool:
        """Put the state kept under `key` into sequence `seq_id` (emptied first); False when
        llama.cpp refuses it (the sequence is left empty)."""
        import llama_cpp

        memory = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
        data = self.states[key]
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if not llama_cpp.llama_state_seq_set_data(ctx, buffer, len(data), seq_id):
            llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
            return False
        self.states.move_to_end(key)
        self.restored += 1
        return True

    def save(self) -> None:
        """Keep the Llama context's state (the prompt and answer just evaluated)."""
        llama = self.llama
        self.keep(tuple(int(t) for t in llama.input_ids[:llama.n_tokens]), llama._ctx.ctx, 0)

    def restore(self, prompt: list[int]) -> int:
        """Load into the Llama context the kept state sharing the longest start with
        `prompt`, if it shares more than the context holds now (and PREFIX_MIN tokens at
        least). The tokens shared."""
        llama = self.llama
        best, length = self.closest(prompt, max(
            PREFIX_MIN - 1, shared_length(llama.input_ids[:llama.n_tokens], prompt)))
        if best is None:
            return 0
        llama.n_tokens = 0
        if not self.load(best, llama._ctx.ctx, 0):
            return 0  # (read from the start)
        llama.input_ids[:len(best)] = best
        llama.n_tokens = len(best)  # llama.generate reads the prompt from where they part
        llama._requires_eval = True  # the logits are not the state's: its last token is read
        return length


class GgufEngine:
    """Generation with a llama.cpp GGUF: `parallel` answers at once (1: one at a time in the
    Llama object's own context), each with `n_ctx` tokens of prompt and answer."""

    name = "gguf"

    def __init__(self, llama, *, end_ids: set[int], stop_markers=(),
                 repetition_penalty: float = 1.0, path: Path | None = None,
                 parallel: int | None = None, n_ctx: int | None = None):
        parallel = default_parallel() if parallel is None else parallel
        if parallel < 1:
            raise UserError(f"parallel must be 1 (one answer at a time) or more, not {parallel}")
        self.llama, self.path, self.parallel = llama, path, parallel
        self.end_ids = set(end_ids) | {llama.token_eos()}
        self.stop_markers = tuple(stop_markers)
        self.repetition_penalty = repetition_penalty
        self.context_length = n_ctx or llama.n_ctx()  # tokens of one answer's prompt + answer
        self.lock = threading.Lock()
        self.prefixes = PrefixStates(llama)
        self._partial = False  # the context began as a kept state longer than the window
        self.batcher = None
        if parallel > 1:
            from builder.answering.engines.llamacpp_batch import Batcher

            self.batcher = Batcher(llama, parallel, self.context_length, self.end_ids,
                                   repetition_penalty, self.prefixes)

    @classmethod
    def load(cls, path: Path, *, n_ctx: int = N_CTX, parallel: int | None = None,
             **options) -> "GgufEngine":
        """The GGUF at `path`; with parallel > 1 the Llama object only tokenizes (a small
        context of its own) and the answers share a context of parallel x n_ctx tokens."""
        parallel = default_parallel() if parallel is None else parallel
        llama = load_llama(path, n_ctx if parallel == 1 else TOKENIZER_CTX)
        return cls(llama, path=Path(path), parallel=parallel, n_ctx=n_ctx, **options)

    def encode(self, prompt: str) -> list[int]:
        """The prompt's ids by the GGUF's tokenizer, BOS first (special tokens in the text are
        text, as the transformers tokenizer treats them)."""
        return self.llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)

    def decode(self, ids: list[int]) -> str:
        # a character whose bytes are not all generated yet decodes to U+FFFD, held back
        return self.llama.detokenize(ids).decode("utf-8", errors="replace")

    def stream(self, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 0.9, stop_event: threading.Event | None = None, flags=None,
               generated_ids: list[int] | None = None, **ignored) -> Iterator[str]:
        """Yield the answer as text deltas, as the transformers engine does (logits_processor
        is a transformers option and is ignored here)."""
        ids = self.encode(prompt)
        if len(ids) >= self.context_length:
            raise UserError(f"the prompt has {len(ids)} tokens: the model reads at most "
                            f"{self.context_length} (prompt and answer); ask a shorter question")
        if self.batcher is not None:
            tokens = self.batcher.tokens(ids, max_new_tokens, temperature, top_p, stop_event,
                                         flags, generated_ids)
            try:
                yield from answer_deltas(tokens, self.decode, self.stop_markers, self.end_ids)
            finally:
                tokens.close()  # frees the answer's sequence for the next one
            return
        with self.lock:
            tokens = self._tokens(ids, max_new_tokens, temperature, top_p, stop_event, flags,
                                  generated_ids)
            try:
                yield from answer_deltas(tokens, self.decode, self.stop_markers, self.end_ids)
            finally:
                tokens.close()  # ends llama.cpp's generation loop before the lock is released

    def warm(self, prompt: str) -> bool:
        """Keep the KV state of `prompt` (one at a time under the lock: answers go between);
        False when it does not fit."""
        ids = self.encode(prompt)
        if len(ids) + 1 > self.context_length:
            return False
        if self.batcher is not None:
            self.batcher.warm(ids)
            return True
        with self.lock:
            self.llama.reset()
            self._partial = False
            self.llama.eval(ids)
            self.prefixes.save()
        return True

    def _forget_unless_continued(self, prompt: list[int]) -> None:
        """Empty the context when it was started from a kept state longer than the sliding
        window and `prompt` would cut it back: such a state holds a sliding-window layer's
        cells of its last window only, so the cells before are missing, and llama-cpp-python,
        reusing the shared start, gave wrong answers from there."""
        llama = self.llama
        if self._partial and shared_length(llama.input_ids[:llama.n_tokens], prompt) \
                < llama.n_tokens:
            llama.reset()
            self._partial = False

    def _tokens(self, prompt: list[int], max_new_tokens: int, temperature: float, top_p: float,
                stop_event, flags, generated_ids: list[int] | None):
        from builder.answering.engines.llamacpp_batch import penalize

        penalty = self.repetition_penalty
        start = len(prompt)

        def penalized(input_ids, scores):
            return penalize(scores, input_ids[start:], penalty)

        sampling = dict(temp=temperature, top_p=top_p, top_k=0, min_p=0.0) if temperature > 0 \
            else dict(temp=0.0)
        generated: list[int] = []
        self._forget_unless_continued(prompt)
        window = self.prefixes.window
        if self.prefixes.restore(prompt) and window is not None and self.llama.n_tokens > window:
            self._partial = True
        stream = self.llama.generate(
            prompt, repeat_penalty=1.0, reset=True, **sampling,
            logits_processor=[penalized] if penalty > 1 else None)
        try:
            for token_id in stream:
                generated.append(int(token_id))
                if generated_ids is not None:
                    generated_ids.append(int(token_id))
                yield int(token_id)
                if token_id in self.end_ids:
                    return
                if len(generated) >= max_new_tokens:
                    if flags is not None:
                        flags.cut = True  # the token limit, not the model, ended it
                    return
                if runaway(generated):
                    if flags is not None:
                        flags.runaway = True
                    return
                if stop_event is not None and stop_event.is_set():
                    return
        finally:
            stream.close()
            self.prefixes.save()
