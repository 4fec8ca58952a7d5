"""The transformers engine: a model and its tokenizer in this process (CPU or GPU).

    engine = TransformersEngine.load(model_dir, adapter_dir=None, stop_markers=[...],
                                     end_ids={1, 106}, repetition_penalty=1.1)
    for delta in engine.stream(prompt, max_new_tokens=256): ...
    engine.batch([prompt, ...], max_new_tokens=96)        # [(answer, looped, cut)], left-padded
    TransformersEngine.load(model_dir, prompt_lookup_tokens=10)  # greedy answers copy faster

The prompt is encoded exactly as training encoded it (the tokenizer adds `<bos>`). Generation
stops at any end token (the generation config's list, the tokenizer's EOS, `<end_of_turn>` /
`<|eot_id|>` / `<|end_of_text|>`), at the template's stop markers and at a repeating loop. The
repetition penalty applies only to the tokens the answer generated, never to the FAQ in the
prompt: copying from it is the job.

With `prompt_lookup_tokens` N > 0, greedy answers use prompt-lookup decoding: up to N tokens
that follow the answer's last two tokens somewhere in the prompt (usually the FAQ answer being
copied) are checked in one forward pass, and every one the model would have picked itself is
kept. The answer is the one plain greedy decoding gives (checking several positions in one
pass moves fp32 logits by ~4e-5 at most). Sampling, a caller's logits processor and `batch`
(transformers assists one row only) decode one token per pass.
"""

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from builder.answering.decoding import answer_deltas, visible_answer
from builder.answering.guard import runaway

END_TOKEN_NAMES = ("<end_of_turn>", "<|eot_id|>", "<|end_of_text|>")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "chat_template.jinja")
_tokenizers: dict[str, object] = {}


def load_tokenizer(path):
    """`AutoTokenizer.from_pretrained(path)`, once per process for the same tokenizer files.

    Loading the 262k-token gemma tokenizer takes ~5 s on 2 cores (transformers parses its 33 MB
    tokenizer.json in Python several times), and one run's stages load the same tokenizer from
    the base model, adapter/ and merged/. Callers share the object: never change it. A name that
    is not a local folder (a Hub id) is loaded as it is, uncached."""
    import hashlib

    from transformers import AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        return AutoTokenizer.from_pretrained(path)
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        file = folder / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    key = digest.hexdigest()
    if key not in _tokenizers:
        if len(_tokenizers) >= 8:  # a long-lived app that switched between many bases
            _tokenizers.pop(next(iter(_tokenizers)))
        _tokenizers[key] = AutoTokenizer.from_pretrained(folder)
    return _tokenizers[key]


def end_token_ids(generation_config, tokenizer) -> set[int]:
    """Every id that ends an answer: generation config's eos (int or list), the tokenizer's
    EOS, and the end-of-turn tokens of gemma / Llama-3 when the vocabulary has them."""
    configured = generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    for name in END_TOKEN_NAMES:
        token_id = tokenizer.convert_tokens_to_ids(name)
        if token_id != tokenizer.unk_token_id:  # a name not in the vocabulary maps to <unk>
            ids.add(token_id)
    ids.discard(None)
    return ids


def load_dtype(model_dir: Path, device):
    """bf16 on a GPU that supports it, fp16 on older ones (T4, V100), as training chooses; on
    CPU the folder's dtype, but fp32 for half precision (bf16 matmuls run about 2.5x slower than
    fp32 on CPU)."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    saved = config.get("dtype") or config.get("torch_dtype") or "float32"
    return torch.float32 if saved in ("bfloat16", "float16") else getattr(torch, saved)


class _AnswerEnd:
    """Where an answer ends, decided token by token: an end token, a stop marker, a loop, the
    token limit or a set event. It is generate's StoppingCriteria; with prompt lookup one step
    adds several tokens, and the answer still ends at the token plain decoding stops at."""

    def __init__(self, engine, prompt_length: int, max_new_tokens: int, events, flags):
        self.engine, self.prompt_length = engine, prompt_length
        self.max_new_tokens, self.events, self.flags = max_new_tokens, events, flags
        self.generated: list[int] = []  # the answer's ids, the one that ended it included
        self.done = False

    def take(self, token_ids: list[int], start: int) -> None:
        """Check generated ids `start`, `start` + 1, ... (`token_ids`) up to the answer's end.
        Both generate's criteria call and its streamer hand ids over, in either order (plain
        decoding calls the criteria first, assisted decoding the streamer): each id is
        checked once."""
        for position, token_id in enumerate(token_ids, start):
            if self.done:
                return
            if position < len(self.generated):
                continue
            self.generated.append(token_id)
            self.done = self._ends()

    def __call__(self, ids, scores, **kwargs):
        import torch

        self.take(ids[0, self.prompt_length:].tolist(), 0)
        return torch.full((ids.shape[0],), self.done, dtype=torch.bool, device=ids.device)

    # Decoding the answer at every token costs ~0.04 ms (gemma, 180 tokens), against tens of
    # ms per generated token. transformers' StopStringCriteria (generate(stop_strings=...))
    # avoids the decode but needs ~2.9 s to index gemma's 262k-token vocabulary each time it
    # is built: slower for every answer shorter than tens of thousands of tokens.
    def _ends(self) -> bool:
        generated, flags, engine = self.generated, self.flags, self.engine
        looping = runaway(generated)
        if looping and flags is not None:
            flags.runaway = True
        if (flags is not None and len(generated) >= self.max_new_tokens
                and generated[-1] not in engine.end_ids):
            flags.cut = True  # the token limit, not the model, ended it
        return (
            generated[-1] in engine.end_ids
            or looping
            or len(generated) >= self.max_new_tokens
            or any(event.is_set() for event in self.events)
            or any(marker in engine.decode(generated) for marker in engine.stop_markers)
        )


class _TokenQueue:
    """A generate() streamer that hands each answer token id to the reading thread: generate
    calls put() with the prompt, then with each step's new ids (one, or several a prompt
    lookup kept), then end(). Ids past the answer's end are never handed on."""

    def __init__(self, answer_end: _AnswerEnd):
        self.answer_end = answer_end
        self.ids: list[int] = []  # every answer id, end token included; read after join
        self._queue: queue.Queue = queue.Queue()
        self._prompt_seen = False
        self._received = 0  # generated ids put() was given

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        new = [int(t) for t in value.reshape(-1)]
        self.answer_end.take(new, self._received)
        self._received += len(new)
        for token_id in self.answer_end.generated[len(self.ids):self._received]:
            self.ids.append(token_id)
            self._queue.put(token_id)

    def end(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[int]:
        while (token_id := self._queue.get()) is not None:
            yield token_id


class TransformersEngine:
    """Generation with a transformers model (or a PEFT model: base + adapter)."""

    name = "transformers"

    def __init__(self, model, tokenizer, *, end_ids: set[int], stop_markers=(),
                 repetition_penalty: float = 1.0, context_length: int | None = None,
                 prompt_lookup_tokens: int = 0, adapter: str | None = None, lock=None):
        self.model, self.tokenizer = model, tokenizer
        # a PEFT model holding several shops' adapters (builder.answering.engines.adapters):
        # this engine generates with `adapter`'s, one generation at a time under `lock`
        self.adapter, self.lock = adapter, lock or threading.Lock()
        self.end_ids, self.stop_markers = set(end_ids), tuple(stop_markers)
        self.repetition_penalty = repetition_penalty
        self.prompt_lookup_tokens = prompt_lookup_tokens  # 0: one token per forward pass
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(end_ids)
        # the most tokens (prompt + answer) the model has positions for; longer prompts are cut
        text_config = model.config.get_text_config()
        self.context_length = getattr(text_config, "max_position_embeddings", None) \
            or context_length

    @classmethod
    def load(cls, model_dir: Path, adapter_dir: Path | None = None, *, device: str | None = None,
             end_ids=(), **options) -> "TransformersEngine":
        """`model_dir` (a merged model or the base model, with `adapter_dir` on top); the end
        ids are the model's own plus `end_ids` (what training appended)."""
        import torch
        from transformers import AutoModelForCausalLM

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=load_dtype(model_dir, device))
        tokenizer_dir = model_dir
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir)
            if (adapter_dir / "tokenizer_config.json").is_file():
                tokenizer_dir = adapter_dir  # training saves its tokenizer next to the adapter
        tokenizer = load_tokenizer(tokenizer_dir)
        model.to(device).eval()
        ends = end_token_ids(model.generation_config, tokenizer) | set(end_ids)
        return cls(model, tokenizer, end_ids=ends, **options)

    def encode(self, prompt: str) -> list[int]:
        # exactly like training: the tokenizer adds <bos> in front of the rendered prompt
        return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def stream(self, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 0.9, stop_event: threading.Event | None = None, flags=None,
               logits_processor: list | None = None,
               generated_ids: list[int] | None = None) -> Iterator[str]:
        """Yield the answer as text deltas while it is generated. temperature 0 is greedy;
        setting `stop_event` ends it after the current token; `flags.runaway` is set when the
        loop check ends it; `logits_processor` goes to generate (the tests force an end token
        with it; it turns prompt lookup off); `generated_ids` receives every generated id
        (the bench counts them)."""
        halt = threading.Event()  # set when the reader leaves early, so generate stops too
        events = [halt] + ([stop_event] if stop_event is not None else [])
        kwargs = self._generate_kwargs(prompt, events, max_new_tokens=max_new_tokens,
                                       temperature=temperature, top_p=top_p,
                                       logits_processor=logits_processor, flags=flags)
        tokens = _TokenQueue(kwargs["stopping_criteria"][0])
        errors: list[BaseException] = []

        def work():
            try:
                with self.lock:
                    self.model.generate(**kwargs, streamer=tokens)
            except BaseException as err:  # handed to the reader, which re-raises it
                errors.append(err)
            finally:
                tokens.end()

        worker = threading.Thread(target=work, name="chat-generate", daemon=True)
        worker.start()
        try:
            yield from answer_deltas(tokens, self.decode, self.stop_markers, self.end_ids)
        finally:
            halt.set()
            worker.join()
            if generated_ids is not None:
                generated_ids.extend(tokens.ids)
        if errors:
            raise errors[0]

    def generate_text(self, prompt: str, **options) -> str:
        """The answer from one generate() call without a streamer, cut by the same rules.
        Options: max_new_tokens, temperature, top_p, logits_processor (as for stream)."""
        kwargs = self._generate_kwargs(prompt, [], **options)
        with self.lock:
            self.model.generate(**kwargs)
        answer_end = kwargs["stopping_criteria"][0]  # it has seen every step: it holds the answer
        return visible_answer(self.decode(self._until_end(answer_end.generated)),
                              self.stop_markers)

    def batch(self, prompts: list[str], *, max_new_tokens: int = 256, temperature: float = 0.0,
              top_p: float = 0.9) -> list[tuple[str, bool]]:
        """Answers to many prompts in one left-padded generate call, greedy or sampled:
        [(visible answer, ended by the runaway check, ended by max_new_tokens)], cut as a
        stream is."""
        import torch
        from transformers import RepetitionPenaltyLogitsProcessor, StoppingCriteriaList

        encoded = [self.encode(p) for p in prompts]
        width = max(map(len, encoded))
        input_ids = torch.tensor([[self.pad_id] * (width - len(e)) + e for e in encoded],
                                 device=self.device)
        attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded],
                                 device=self.device)
        looped = [False] * len(encoded)

        def stop(ids, scores, **kwargs):  # per row: an end token, a loop or a stop marker
            done = []
            for row, row_ids in enumerate(ids[:, width:].tolist()):
                if any(t in self.end_ids for t in row_ids):
                    done.append(True)
                    continue
                looped[row] = looped[row] or runaway(row_ids)
                done.append(looped[row] or any(marker in self.decode(row_ids)
                                               for marker in self.stop_markers))
            return torch.tensor(done, dtype=torch.bool, device=ids.device)

        processors = []
        if self.repetition_penalty > 1:
            processors.append(RepetitionPenaltyLogitsProcessor(
                self.repetition_penalty, prompt_ignore_length=width))
        with torch.inference_mode(), self.lock:
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                eos_token_id=sorted(self.end_ids), pad_token_id=self.pad_id,
                stopping_criteria=StoppingCriteriaList([stop]), logits_processor=processors,
                repetition_penalty=1.0, **_sampling(temperature, top_p),
                **self._adapters(len(encoded)))
        answers = []
        for row, row_ids in enumerate(output[:, width:].tolist()):
            text = self.decode(self._until_end(row_ids))
            cut = (len(row_ids) >= max_new_tokens and not looped[row] and len(row_ids) ==
                   len(self._until_end(row_ids)) and not any(m in text for m in self.stop_markers))
            answers.append((visible_answer(text, self.stop_markers), looped[row], cut))
        return answers

    def _until_end(self, ids: list[int]) -> list[int]:
        ends = [i for i, token_id in enumerate(ids) if token_id in self.end_ids]
        return ids[: ends[0]] if ends else ids

    def _generate_kwargs(self, prompt, events, *, max_new_tokens=256, temperature=0.0,
                         top_p=0.9, logits_processor=None, flags=None) -> dict:
        import torch
        from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                  StoppingCriteriaList)

        input_ids = torch.tensor([self.encode(prompt)], device=self.device)
        prompt_length = input_ids.shape[1]
        answer_end = _AnswerEnd(self, prompt_length, max_new_tokens, events, flags)
        processors = list(logits_processor or [])
        if self.repetition_penalty > 1:
            # (under prompt lookup it is applied at each checked position to the answer up
            # to there, as plain decoding applies it)
            processors.append(RepetitionPenaltyLogitsProcessor(
                self.repetition_penalty, prompt_ignore_length=prompt_length))
        return dict(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens, eos_token_id=sorted(self.end_ids),
            pad_token_id=self.pad_id, stopping_criteria=StoppingCriteriaList([answer_end]),
            logits_processor=LogitsProcessorList(processors), repetition_penalty=1.0,
            **_sampling(temperature, top_p),
            **self._lookup(temperature, logits_processor),
            **self._adapters(1),
        )

    def _adapters(self, rows: int) -> dict:
        """PEFT's per-request adapters: each row generated with this engine's."""
        return {"adapter_names": [self.adapter] * rows} if self.adapter else {}

    def _lookup(self, temperature: float, logits_processor) -> dict:
        """generate's prompt-lookup option, for greedy answers only: sampled ones would stay
        right in distribution but no longer follow the seed. A caller's logits processor
        turns it off: transformers also calls it on the candidates and with placeholder
        scores, and one written for a call per new token (the tests' scripted answers) would
        lose count."""
        if self.prompt_lookup_tokens <= 0 or temperature > 0 or logits_processor:
            return {}
        return {"prompt_lookup_num_tokens": self.prompt_lookup_tokens}


def _sampling(temperature: float, top_p: float) -> dict:
    return ({"do_sample": True, "temperature": temperature, "top_p": top_p}
            if temperature > 0 else {"do_sample": False})
