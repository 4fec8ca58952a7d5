"""Chat with a trained run: answers stream token by token and stop where the answer ends.

    builder chat RUN_DIR                        # terminal chat; exit, quit or 종료 ends it
    builder ask RUN_DIR "배송은 며칠 걸리나요?"     # one answer, streamed

    from builder.chat import Chatbot
    bot = Chatbot.load("runs/NAME")             # merged/ when present, else base model + adapter/
    for delta in bot.stream("배송은 며칠 걸리나요?"):
        print(delta, end="", flush=True)

The prompt is the run's own template (template.yaml), encoded exactly as training encoded it
(the tokenizer adds `<bos>`). Generation stops at any end token (the generation config's list,
the tokenizer's EOS, `<end_of_turn>` / `<|eot_id|>` / `<|end_of_text|>`) and at any of the
template's stop markers ("### 질문", ...): an under-trained model often opens the next block
instead of ending. What the user sees is `visible_answer(text)` of the text generated so far;
the stream yields how that grows, so a joined stream is the final answer by construction.
A prompt that leaves no room for max_new_tokens within the model's positions
(max_position_embeddings) is cut: the context's end first, then the question's middle.

A grounded run (its template has a `{faq}` slot, its folder a `knowledge/`) answers from the
shop's FAQ: the question is looked up (builder.knowledge); when nothing in the FAQ is about it
the decline message is the answer, without generating; otherwise the model answers from the
retrieved entries, shown sentence by sentence once the fact guard has checked them
(builder.guard). `stream(..., reply=Reply())` fills in the sources, whether the bot declined,
and whether the guard or the runaway check stepped in.
"""

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path

from builder.errors import UserError
from builder.guard import GuardedText, Reply, is_decline, runaway
from builder.prompts import Template, parse_template

log = logging.getLogger(__name__)
END_TOKEN_NAMES = ("<end_of_turn>", "<|eot_id|>", "<|end_of_text|>")
# decode() gives U+FFFD for a character whose bytes are not all generated yet (byte fallback)
REPLACEMENT_CHAR = "\ufffd"
EXIT_WORDS = ("exit", "quit", "종료")
GOODBYE = "대화를 마칩니다. 안녕히 가세요."


# The cut rules: pure functions on text, shared by streamed and one-shot answers


def partial_marker_length(text: str, stop_markers: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the start of a stop marker (0 if none)."""
    longest = 0
    for marker in stop_markers:
        for size in range(min(len(marker), len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


def visible_answer(text: str, stop_markers: Sequence[str]) -> str:
    """What can be shown of a (possibly still growing) generated text.

    Cut before the first stop marker; hold back a trailing half-decoded character (it becomes
    Hangul once its last byte arrives) and a trailing start of a marker ("###" may become
    "### 질문"); strip whitespace. For a text that only grows, each result is a prefix of
    the next one: that is what makes streaming by deltas safe.
    """
    found = [i for i in (text.find(marker) for marker in stop_markers) if i >= 0]
    text = text[: min(found, default=len(text))].rstrip(REPLACEMENT_CHAR)
    text = text[: len(text) - partial_marker_length(text, stop_markers)]
    return text.strip()


def answer_deltas(token_ids: Iterable[int], decode: Callable[[list[int]], str],
                  stop_markers: Sequence[str], end_ids: set[int]) -> Iterator[str]:
    """Text deltas of an answer whose token ids arrive one at a time.

    The whole answer is decoded at every token (not token by token): a multi-byte character
    split over byte tokens, or a space merged into the next token, then decodes right.
    """
    ids: list[int] = []
    shown = ""
    for token_id in token_ids:
        if token_id in end_ids:
            break
        ids.append(token_id)
        text = decode(ids)
        answer = visible_answer(text, stop_markers)
        if len(answer) > len(shown) and answer.startswith(shown):  # only ever append
            yield answer[len(shown):]
            shown = answer
        if any(marker in text for marker in stop_markers):
            break


# A prompt longer than the model's context: what is cut, and in which order


def fit_prompt(encode: Callable[[str, str], list[int]], question: str, context: str,
               budget: int) -> list[int]:
    """The ids of `encode(question, context)` in at most `budget` tokens.

    What does not fit is cut from the context's end first (the context is dropped if need be),
    then from the question's middle: its start stays and twice as much of its end, the part
    next to the answer. `encode("", "")`, the template alone, must fit.
    """
    ids = encode(question, context)
    if len(ids) <= budget:
        return ids
    if context and len(encode(question, "")) <= budget:
        keep = _longest_fit(lambda n: len(encode(question, context[:n])) <= budget, len(context))
        return encode(question, context[:keep])
    def fits(n: int) -> bool:
        return len(encode(_cut_middle(question, n), "")) <= budget

    return encode(_cut_middle(question, _longest_fit(fits, len(question))), "")


def _cut_middle(text: str, keep: int) -> str:
    """`text` in `keep` characters: its first third and last two thirds, joined by an ellipsis."""
    if keep >= len(text):
        return text
    if keep == 0:
        return ""
    head = keep // 3
    return text[:head] + "…" + text[len(text) - (keep - head):]


def _longest_fit(fits: Callable[[int], bool], n: int) -> int:
    """The largest k in 0..n with fits(k), by bisection; fits(0) is taken as true."""
    low, high = 0, n
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


# What generate() calls back: a streamer (duck-typed, so this module imports without torch)


class _TokenQueue:
    """A generate() streamer that hands each new token id to the reading thread: generate
    calls put() with the prompt, then once per new token (batch of one), then end()."""

    def __init__(self):
        self.ids: list[int] = []  # every generated id, end token included; read after join
        self._queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        token_id = int(value.reshape(-1)[0])
        self.ids.append(token_id)
        self._queue.put(token_id)

    def end(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[int]:
        while (token_id := self._queue.get()) is not None:
            yield token_id


# The chatbot


class Chatbot:
    """A model, its tokenizer and the run's template, ready to answer questions."""

    def __init__(self, model, tokenizer, template: Template, end_ids: set[int], *,
                 knowledge=None, rag=None):
        self.model = model
        self.knowledge = knowledge  # builder.knowledge.Knowledge for a grounded run, else None
        self.log_path: Path | None = None  # RUN/chat.log once loaded from a run folder
        self.rag = rag  # the run's RagConfig (k, decline message, repetition penalty, guard)
        self.exact_answers = True  # an FAQ question asked word for word gets the FAQ's answer
        self.tokenizer = tokenizer
        self.template = template
        self.end_ids = end_ids
        if model is None:  # the model runs elsewhere: a subclass's generate_stream asks it
            self.device = self.pad_id = self.context_length = None  # (builder.serve)
            return
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(end_ids)
        # the most tokens (prompt + answer) the model has positions for; longer prompts are cut
        text_config = model.config.get_text_config()
        self.context_length = getattr(text_config, "max_position_embeddings", None)

    @classmethod
    def load(cls, run_dir: str | Path, *, use: str = "auto", device: str | None = None):
        """A run folder's merged/ (use="auto" prefers it) or meta.json's base model + adapter/."""
        run_dir = Path(run_dir)
        model_dir, adapter_dir = _pick_weights(run_dir, use)
        template = _read_template(run_dir)

        import torch
        from transformers import AutoModelForCausalLM

        from builder.models import load_tokenizer

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
        meta = _read_meta(run_dir)
        end_ids = end_token_ids(model.generation_config, tokenizer)
        end_ids |= set(meta.get("end_token_ids") or [])  # what training appended
        knowledge, rag = _read_knowledge(run_dir, template, meta)
        bot = cls(model, tokenizer, template, end_ids, knowledge=knowledge, rag=rag)
        bot.log_path = run_dir / "chat.log"
        if bot.context_length is None:  # a config without it: the length the run trained on
            bot.context_length = meta.get("config", {}).get("model", {}).get("max_seq_length")
        return bot

    def stream(self, question: str, context: str = "", *, reply: Reply | None = None,
               **options) -> Iterator[str]:
        """Yield the answer as text deltas; for a grounded run, retrieve first and guard facts.
        Options as for `generate_stream`; `reply`, if given, is filled in."""
        reply = reply if reply is not None else Reply()
        if self.knowledge is None:
            for delta in self.generate_stream(question, context, reply=reply, **options):
                reply.text += delta
                yield delta
            return
        hits = self._ground(question, context, reply)
        if hits is None:
            yield reply.text
            return
        shown = self._guarded(hits, question, context)
        faq = self.template.render_faq([h.entry for h in hits])
        with closing(self.generate_stream(question, context, faq=faq, reply=reply,
                                          **options)) as deltas:
            for delta in deltas:
                if text := shown.feed(delta):
                    reply.text += text
                    yield text
                if shown.tripped:
                    break
        # a loop's unfinished sentence is never shown: only the sentences checked before it
        if not reply.runaway and (text := shown.finish()):
            reply.text += text
            yield text
        if text := self._settle(reply, shown, hits):
            yield text
        if reply.guarded or reply.runaway:
            self._log_event(question, reply)

    def _log_event(self, question: str, reply: Reply) -> None:
        """The fact guard or the runaway check stepped in: a line in RUN/chat.log, so the owner
        can count how often (the eval counts it on its questions too)."""
        event = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "question": question,
                 "event": "fact guard" if reply.guarded else "runaway check",
                 "outcome": "fallback to the best entry" if reply.fallback else "answer cut",
                 "why": reply.why,
                 "invented": [list(f) for f in reply.invented], "generated": reply.generated}
        log.info("%s: %r -> %s", event["event"], question, event["outcome"])
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(event, ensure_ascii=False) + "\n")

    def _ground(self, question: str, context: str, reply: Reply):
        """The entries retrieved for `question`, or None when the reply is settled without
        generating: the FAQ's own answer for a question that is an FAQ question word for word
        (with the same context), or the decline message when the gate declines it."""
        if self.exact_answers and (hit := self.knowledge.exact(question, context)) is not None:
            reply.exact, reply.sources, reply.text = True, [hit], hit.entry.answer
            return None
        hits = self.knowledge.search(question, self.rag.k)
        if not self.knowledge.relevant(question, hits):
            reply.declined = reply.gated = True
            reply.text = self.rag.decline_message
            return None
        reply.sources = hits = self.prompt_hits(question, hits)
        return hits

    def ready(self, model: bool = True) -> None:
        """Load now what the first answer would wait for (Kiwi, the knowledge's per-entry
        caches and, with `model`, the model's first step): `builder serve` calls it before it
        listens, so the first customer is answered as fast as the next."""
        question, faq = "안녕하세요", ""
        if self.knowledge is not None and self.knowledge.entries:
            question = self.knowledge.entries[0].question
            self.knowledge.exact(question)
            hits = self.knowledge.search(question, self.rag.k)
            if hits and self.knowledge.relevant(question, hits):
                self.knowledge.coverage(question, hits[0].entry)
            faq = self.template.render_faq([h.entry for h in hits])
            self._guarded(hits, question, "").feed(hits[0].entry.answer[:20])
        if model:  # a prompt as long as an answer's: the model's buffers are sized for it
            for _ in self.generate_stream(question, faq=faq, max_new_tokens=1):
                pass

    def prompt_hits(self, question: str, hits: list) -> list:
        """The retrieved entries the answer's prompt carries: with rag.prompt_entries
        "fitting", only those an answer may come from (`Knowledge.fitting`), so the prompt is
        shorter and the first token comes sooner."""
        if self.rag.prompt_entries == "fitting":
            return self.knowledge.fitting(question, hits)
        return hits

    def _guarded(self, hits, question: str, context: str) -> GuardedText:
        # the decline message may name the shop's phone number: the model says it when it declines
        sources = [h.entry.text for h in hits] + [question, context, self.rag.decline_message]
        # a lower entry may be copied only if it covers the question as well as the best one:
        # "탈퇴하고 언제 다시 가입?" is not answered with how to leave
        covered = [self.knowledge.coverage(question, h.entry) for h in hits]
        may_copy = [h.entry.answer for h, c in zip(hits, covered) if c >= covered[0]]
        return GuardedText(sources, enabled=self.rag.fact_guard,
                           answers=[h.entry.answer for h in hits],
                           questions=[line for h in hits
                                      for line in (h.entry.question, h.entry.context) if line],
                           asked=[question, context],
                           decline_message=self.rag.decline_message, may_copy=may_copy)

    def _settle(self, reply: Reply, shown: GuardedText, hits) -> str:
        """After the guard saw the whole answer: the fallback text to add ('' if none)."""
        reply.generated, reply.invented = shown.text, sorted(shown.invented)
        reply.why = shown.why() or ("a repeating loop" if reply.runaway else "")
        added = ""
        if not reply.text.strip():  # nothing shown (tripped, looped, empty): the best entry's
            reply.guarded = reply.fallback = True  # own answer instead
            reply.sources = hits[:1]
            added = reply.text = hits[0].entry.answer
        elif (shown.tripped or reply.runaway) and (rest := shown.copied_rest()):
            # cut while copying an entry's answer: the rest of that answer completes it
            reply.guarded = reply.fallback = True
            reply.sources = [h for h in hits if h.entry.answer.endswith(rest)][:1] or hits[:1]
            added, reply.text = rest, reply.text + rest
        elif shown.tripped:
            reply.guarded = True
        if is_decline(reply.text, self.rag.decline_message):
            reply.declined, reply.sources = True, []
        return added

    def reply_batch(self, items: list[tuple[str, str]], *, max_new_tokens: int = 256,
                    batch_size: int = 8, temperature: float = 0.0,
                    top_p: float = 0.9) -> list[Reply]:
        """Replies to many (question, context) pairs, generated `batch_size` at a time (greedy;
        sampled when temperature > 0), through the same gate, guard and fallback as `stream`.
        For the eval, and for the sampled answers preference pairs are built from."""
        replies = [Reply() for _ in items]
        todo = []  # (reply, question, context, faq, hits)
        for reply, (question, context) in zip(replies, items):
            hits = [] if self.knowledge is None else self._ground(question, context, reply)
            if hits is not None:
                faq = self.template.render_faq([h.entry for h in hits]) if hits else ""
                todo.append((reply, question, context, faq, hits))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            outputs = self._generate_batch([(q, c, faq) for _, q, c, faq, _ in chunk],
                                           max_new_tokens, temperature=temperature, top_p=top_p)
            for (reply, question, context, _, hits), (text, looped) in zip(chunk, outputs):
                reply.runaway = looped
                if self.knowledge is None:
                    reply.text = reply.generated = text
                    continue
                shown = self._guarded(hits, question, context)
                # fed word by word, as a stream is: the guard releases and trips as it would live
                reply.text = "".join(shown.feed(word) for word in re.split(r"(?<=\s)", text))
                reply.text += "" if looped or shown.tripped else shown.finish()
                self._settle(reply, shown, hits)
        return replies

    def reply(self, question: str, context: str = "", **options) -> Reply:
        """The whole answer with its sources and flags (the joined stream)."""
        reply = Reply()
        for _ in self.stream(question, context, reply=reply, **options):
            pass
        return reply

    def generate_stream(self, question: str, context: str = "", *, faq: str = "",
                        reply: Reply | None = None, max_new_tokens: int = 256,
                        temperature: float = 0.0, top_p: float = 0.9,
                        stop_event: threading.Event | None = None,
                        logits_processor: list | None = None,
                        generated_ids: list[int] | None = None) -> Iterator[str]:
        """Yield the model's answer as text deltas while it is generated (no retrieval).

        temperature 0 is greedy. Setting `stop_event` ends the answer after the current token.
        `logits_processor` is passed to generate (the tests force an end token with it);
        `generated_ids`, if given, receives every generated token id (the bench counts them).
        """
        halt = threading.Event()  # set when the reader leaves early, so generate stops too
        events = [halt] + ([stop_event] if stop_event is not None else [])
        tokens = _TokenQueue()
        flags = reply if reply is not None else Reply()
        kwargs = self._generate_kwargs(question, context, events, max_new_tokens=max_new_tokens,
                                       temperature=temperature, top_p=top_p,
                                       logits_processor=logits_processor, faq=faq, flags=flags)
        errors: list[BaseException] = []

        def work():
            try:
                self.model.generate(**kwargs, streamer=tokens)
            except BaseException as err:  # handed to the reader, which re-raises it
                errors.append(err)
            finally:
                tokens.end()

        worker = threading.Thread(target=work, name="chat-generate", daemon=True)
        worker.start()
        try:
            yield from answer_deltas(tokens, self._decode, self.template.stop_markers, self.end_ids)
        finally:
            halt.set()
            worker.join()
            if generated_ids is not None:
                generated_ids.extend(tokens.ids)
        if errors:
            raise errors[0]

    def answer(self, question: str, context: str = "", **options) -> str:
        """The whole answer as one string: the joined stream."""
        return "".join(self.stream(question, context, **options))

    def generate_text(self, question: str, context: str = "", **options) -> str:
        """The answer from one generate() call without a streamer, cut by the same rules.
        Options: max_new_tokens, temperature, top_p, logits_processor (as for stream)."""
        kwargs = self._generate_kwargs(question, context, [], **options)
        output = self.model.generate(**kwargs)
        ids = output[0, kwargs["input_ids"].shape[1]:].tolist()
        ends = [i for i, token_id in enumerate(ids) if token_id in self.end_ids]
        ids = ids[: ends[0]] if ends else ids
        return visible_answer(self._decode(ids), self.template.stop_markers)

    def _prompt_ids(self, question: str, context: str, faq: str, max_new_tokens: int) -> list[int]:
        def encode(question: str, context: str) -> list[int]:
            # exactly like training: the tokenizer adds <bos> in front of the rendered prompt
            prompt = self.template.render(question, context, faq)
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]

        if self.context_length is None:
            return encode(question, context)
        budget = self.context_length - max_new_tokens  # room for the whole answer is kept
        if len(encode("", "")) > budget:
            raise UserError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt: "
                            f"the model has {self.context_length} positions in all")
        return fit_prompt(encode, question, context, budget)

    def _generate_batch(self, prompts: list[tuple[str, str, str]], max_new_tokens: int, *,
                        temperature: float = 0.0, top_p: float = 0.9) -> list[tuple[str, bool]]:
        """Answers to (question, context, faq) prompts in one left-padded generate call, greedy
        or sampled: [(visible answer, ended by the runaway check)], cut as a stream is."""
        import torch
        from transformers import RepetitionPenaltyLogitsProcessor, StoppingCriteriaList

        encoded = [self._prompt_ids(q, c, faq, max_new_tokens) for q, c, faq in prompts]
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
                done.append(looped[row] or any(marker in self._decode(row_ids)
                                               for marker in self.template.stop_markers))
            return torch.tensor(done, dtype=torch.bool, device=ids.device)

        processors = []
        if self.rag is not None and self.rag.repetition_penalty > 1:
            processors.append(RepetitionPenaltyLogitsProcessor(
                self.rag.repetition_penalty, prompt_ignore_length=width))
        sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p}
                    if temperature > 0 else {"do_sample": False})  # as a stream samples
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                eos_token_id=sorted(self.end_ids), pad_token_id=self.pad_id,
                stopping_criteria=StoppingCriteriaList([stop]), logits_processor=processors,
                repetition_penalty=1.0, **sampling)
        answers = []
        for row, row_ids in enumerate(output[:, width:].tolist()):
            ends = [i for i, token_id in enumerate(row_ids) if token_id in self.end_ids]
            row_ids = row_ids[: ends[0]] if ends else row_ids
            answers.append((visible_answer(self._decode(row_ids), self.template.stop_markers),
                            looped[row]))
        return answers

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _generate_kwargs(self, question, context, events, *, max_new_tokens=256, temperature=0.0,
                         top_p=0.9, logits_processor=None, faq="", flags=None) -> dict:
        import torch
        from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                  StoppingCriteriaList)

        prompt_ids = self._prompt_ids(question, context, faq, max_new_tokens)
        input_ids = torch.tensor([prompt_ids], device=self.device)
        prompt_length = input_ids.shape[1]

        # Decoding the answer at every token costs ~0.04 ms (gemma, 180 tokens), against tens of
        # ms per generated token. transformers' StopStringCriteria (generate(stop_strings=...))
        # avoids the decode but needs ~2.9 s to index gemma's 262k-token vocabulary each time it
        # is built: slower for every answer shorter than tens of thousands of tokens.
        def stop(ids, scores, **kwargs):  # a StoppingCriteria, called after every new token
            generated = ids[0, prompt_length:].tolist()
            looping = runaway(generated)
            if looping and flags is not None:
                flags.runaway = True
            done = (
                generated[-1] in self.end_ids
                or looping
                or any(event.is_set() for event in events)
                or any(marker in self._decode(generated) for marker in self.template.stop_markers)
            )
            return torch.full((ids.shape[0],), done, dtype=torch.bool, device=ids.device)

        processors = list(logits_processor or [])
        if self.rag is not None and self.rag.repetition_penalty > 1:
            # only what the answer generated is penalised: copying from the FAQ context is the job
            processors.append(RepetitionPenaltyLogitsProcessor(
                self.rag.repetition_penalty, prompt_ignore_length=prompt_length))

        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p)
        return dict(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens, eos_token_id=sorted(self.end_ids),
            pad_token_id=self.pad_id, stopping_criteria=StoppingCriteriaList([stop]),
            logits_processor=LogitsProcessorList(processors), repetition_penalty=1.0,
            **(sampling if temperature > 0 else dict(do_sample=False)),
        )


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


def _pick_weights(run_dir: Path, use: str) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None) for `use`, or a UserError that says what to run."""
    if use not in ("auto", "merged", "adapter"):
        raise ValueError(f"use must be 'auto', 'merged' or 'adapter', not {use!r}")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder; make one with "
                        f"`builder train DATA_DIR --out {run_dir}`")
    merged_dir, adapter_dir = run_dir / "merged", run_dir / "adapter"
    has_merged = (merged_dir / "config.json").is_file()
    if use == "merged" or (use == "auto" and has_merged):
        if not has_merged:
            raise UserError(f"{run_dir}: no merged model in merged/; make it with "
                            f"`builder merge {run_dir}`")
        return merged_dir, None
    if not (adapter_dir / "adapter_config.json").is_file():
        if use == "adapter":
            raise UserError(f"{run_dir}: no LoRA adapter in adapter/; train one with "
                            f"`builder train DATA_DIR --out {run_dir}`")
        raise UserError(f"{run_dir}: neither merged/ nor adapter/ is there; train with "
                        f"`builder train DATA_DIR --out {run_dir}`, then `builder merge {run_dir}`")
    base_path = _read_meta(run_dir).get("base_model_path")
    if not base_path or not Path(base_path).is_dir():
        raise UserError(f"{run_dir / 'meta.json'}: base model folder {base_path!r} not found; the "
                        f"adapter needs it (or merge it on the training machine: `builder merge`)")
    return Path(base_path), adapter_dir


def _read_meta(run_dir: Path) -> dict:
    """meta.json written by `builder train`; {} when absent (a merged folder is enough to chat)."""
    path = run_dir / "meta.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err}); re-run `builder train`") from None


def _read_knowledge(run_dir: Path, template: Template, meta: dict):
    """(Knowledge, RagConfig) of a grounded run; (None, None) for a run without retrieval."""
    if not template.grounded:
        return None, None
    from builder.config import config_from_dict
    from builder.knowledge import Knowledge

    if not (run_dir / "knowledge" / "index.json").is_file():
        raise UserError(f"{run_dir / 'knowledge'}: missing; this run answers from its FAQ. "
                        f"Build it with `builder index {run_dir} FAQ_FILE`")
    return Knowledge.load(run_dir / "knowledge"), config_from_dict(meta.get("config") or {}).rag


def _read_template(run_dir: Path) -> Template:
    path = run_dir / "template.yaml"
    if not path.is_file():
        raise UserError(f"{path}: missing; {run_dir} was not written by `builder train`")
    return parse_template(path.read_text(encoding="utf-8"), str(path))


def load_dtype(model_dir: Path, device):
    """bf16 on a GPU that supports it, fp16 on older ones (T4, V100), as training chooses; on
    CPU the folder's dtype, but fp32 for half precision (bf16 matmuls run about 2.5x slower than
    fp32 on CPU)."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    saved = config.get("dtype") or config.get("torch_dtype") or "float32"
    return torch.float32 if saved in ("bfloat16", "float16") else getattr(torch, saved)


# The terminal door's loop


def chat_loop(bot: Chatbot, read: Callable[[str], str] | None = None,
              write: Callable | None = None) -> None:
    """Ask, stream the answer, repeat. `write` is called like print: write(text, end=, flush=).

    exit / quit / 종료, Ctrl-D or Ctrl-C at the prompt end the chat; Ctrl-C while an answer
    streams stops only that answer.
    """
    read, write = read or input, write or print  # looked up now, so tests can replace them
    write(f"질문을 입력하세요. 끝내려면 {' / '.join(EXIT_WORDS)}")
    while True:
        try:
            question = read("질문> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("")
            break
        if not question:
            continue
        if question.lower() in EXIT_WORDS:
            break
        reply = Reply()
        try:
            with closing(bot.stream(question, reply=reply)) as deltas:  # joins the generate thread
                for delta in deltas:
                    write(delta, end="", flush=True)
        except KeyboardInterrupt:
            write(" (중단됨)", end="")
        write("")
        if reply.sources:
            write(format_sources(reply))
    write(GOODBYE)


def format_sources(reply: Reply) -> str:
    """'참고한 FAQ: 2행 배송비는 얼마인가요? · 7행 제주도도 무료배송 되나요?'"""
    items = [(f"{h.entry.line}행 " if h.entry.line else "") + h.entry.question
             for h in reply.sources]
    return "참고한 FAQ: " + " · ".join(items) if items else ""
