"""The chatbot: the answering policy over an engine. Every door asks it, so the same
conversation gets the same answer on the page, in the terminal and through the API.

    builder chat RUN_DIR                        # terminal chat; exit, quit or 종료 ends it
    builder ask RUN_DIR "배송은 며칠 걸리나요?"     # one answer, streamed

    from builder.answering.chatbot import load_chatbot
    bot = load_chatbot("runs/NAME")              # merged/ when present, else base + adapter/
    for delta in bot.stream("제주는요?", history=["배송비는 얼마인가요?"]):
        print(delta, end="", flush=True)

How a question is answered (a grounded run: its template has a `{faq}` slot, its folder a
`knowledge/`):
1. `ground` (builder.answering.grounding) looks the question up in the shop's FAQ, with the
   conversation's earlier questions for a short follow-up. An FAQ question asked word for word
   gets the entry's own answer; a question the FAQ says nothing about gets the decline message;
   neither generates.
2. `prompt` renders the run's template with the retrieved entries, cut to the engine's context
   (builder.answering.decoding.fit_prompt).
3. The engine (builder.answering.engines: transformers, llama.cpp, a remote completion server)
   generates; its deltas stop at the end tokens and the template's stop markers.
4. The fact guard (builder.answering.guard) shows the answer sentence by sentence once checked
   and falls back to the best entry's own answer when it must.
`stream(..., reply=Reply())` fills in the sources, the prompt, whether the bot declined and
whether the guard or the runaway check stepped in (and why, and the model's own text): the
doors store it in the conversation log (builder.owner.log).

Before the model is trained (`load_chatbot(RUN, faq_first=True)` on a run whose knowledge is
built but whose model is not there yet) the bot has no engine: step 3 is the best entry's own
answer, marked `reply.faq_only` so the doors can say so; builder.owner.live.follow_model puts
the trained model in (`bot.engine = ...`) once training or the merge has written it.
"""

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

from builder.answering.decoding import fit_prompt
from builder.answering.engines.loading import load_engine, serving_rag
from builder.answering.grounding import Grounder, Grounding
from builder.answering.guard import Reply, combine, settle
from builder.errors import UserError
from builder.run import USES, Run

log = logging.getLogger(__name__)
# what the doors show under an answer given before the model was trained (reply.faq_only)
FAQ_ONLY_NOTE = ("📚 FAQ 원문 답변입니다: 학습된 모델이 준비되면 모델이 답합니다 / the FAQ entry's "
                 "own answer: the trained model answers once it is ready")


class Chatbot:
    """An engine, the run's template and (for a grounded run) its knowledge, ready to answer."""

    def __init__(self, engine, template, *, knowledge=None, rag=None):
        self.engine = engine  # None: no trained model yet, the FAQ's own answers
        self.template = template
        self._rag = rag  # the run's RagConfig (k, decline message, guard, prompt entries)
        self.knowledge = knowledge  # builder.answering.knowledge.Knowledge, or None
        self.exact_answers = True  # an FAQ question asked word for word gets the FAQ's answer

    # The grounding step reads the bot's knowledge and settings: setting either (an updated
    # FAQ, no retraining) changes the next answer

    @property
    def knowledge(self):
        return self._knowledge

    @knowledge.setter
    def knowledge(self, knowledge) -> None:
        self._knowledge = knowledge
        self.grounder = (Grounder(knowledge, self._rag, self.template)
                         if knowledge is not None else None)

    @property
    def rag(self):
        return self._rag

    @rag.setter
    def rag(self, rag) -> None:
        self._rag = rag
        if self.grounder is not None:
            self.grounder.rag = rag

    # The policy

    def ground(self, question: str, context: str = "", history: Sequence[str] = ()) -> Grounding:
        """What the FAQ says about `question` in this conversation (`history`: the customer's
        earlier messages, oldest first)."""
        if self.grounder is None:
            return Grounding(question, context)
        return self.grounder.ground(question, context, history, exact=self.exact_answers)

    def prompt(self, grounding: Grounding, max_new_tokens: int = 256, engine=None) -> str:
        """The template rendered with the grounding's FAQ block, cut so the answer's
        max_new_tokens fit the engine's context (an engine without a tokenizer here gets it
        whole). `engine`: the one that will generate (default: the bot's)."""
        engine = engine or self.engine
        render = self.template.render
        question, context, faq = grounding.question, grounding.context, grounding.faq
        length = engine.context_length if engine is not None else None
        if length is None or engine.encode is None:
            return render(question, context, faq)
        budget = length - max_new_tokens  # room for the whole answer is kept

        def encode(q: str, c: str) -> list[int]:
            return engine.encode(render(q, c, faq))

        if len(encode("", "")) > budget:
            raise UserError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt: "
                            f"the model has {length} positions in all")
        return render(*fit_prompt(encode, question, context, budget), faq)

    def _settled(self, grounding: Grounding, reply: Reply) -> bool:
        """Fill in a reply that needs no generation (an exact FAQ question, a decline)."""
        if grounding.exact is not None:
            reply.exact, reply.sources = True, [grounding.exact]
            reply.text = grounding.exact.entry.answer
        elif grounding.declined:
            reply.declined = reply.gated = True
            reply.text = self.rag.decline_message
        else:
            reply.sources = list(grounding.hits)
        return grounding.settled

    def faq_reply(self, grounding: Grounding, reply: Reply) -> Reply:
        """The answer without a model: the best entry's own answer (or the word-for-word
        entry's, or the decline message). The bot's answer before its model is trained, and
        the evaluation's retrieval-only baseline."""
        if not self._settled(grounding, reply):
            best = grounding.hits[0]
            reply.text = reply.generated = best.entry.answer
            reply.sources, reply.faq_only = [best], True
        return reply

    @property
    def trained(self) -> bool:
        """Whether a model answers (False: the FAQ's own answers until one is put in)."""
        return self.engine is not None

    # Answers

    def stream(self, question: str, context: str = "", *, history: Sequence[str] = (),
               reply: Reply | None = None, **options) -> Iterator[str]:
        """Yield the answer as text deltas. Options go to the engine's stream (max_new_tokens,
        temperature, top_p, stop_event, ...); `reply`, if given, is filled in."""
        reply = reply if reply is not None else Reply()
        grounding = self.ground(question, context, history)
        if grounding.parts:  # two asks: each answered from its own entries, one after the other
            subs = [Reply() for _ in grounding.parts]
            try:
                for i, (part, sub) in enumerate(zip(grounding.parts, subs)):
                    if i:
                        yield "\n"
                    yield from self._stream(part, sub, options)
            finally:  # a stopped answer keeps what was shown, and its sources
                combine(reply, subs)
            return
        yield from self._stream(grounding, reply, options)

    def _stream(self, grounding: Grounding, reply: Reply, options: dict) -> Iterator[str]:
        question, engine = grounding.question, self.engine  # (one engine for the whole answer)
        if engine is None and self.grounder is not None:
            yield self.faq_reply(grounding, reply).text
            return
        if self._settled(grounding, reply):
            yield reply.text
            return
        reply.prompt = self.prompt(grounding, options.get("max_new_tokens", 256), engine)
        deltas = engine.stream(reply.prompt, flags=reply, **options)
        if self.grounder is None:
            for delta in deltas:
                reply.text += delta
                yield delta
            return
        shown = grounding.guard(self.rag)
        with closing(deltas):
            for delta in deltas:
                if text := shown.feed(delta):
                    reply.text += text
                    yield text
                if shown.tripped:
                    break
        # a loop's unfinished sentence is never shown: only the sentences checked before it
        if not reply.runaway and (text := shown.finish(cut=reply.cut)):
            reply.text += text
            yield text
        if text := settle(reply, shown, grounding.hits, self.rag.decline_message):
            yield text
        if reply.guarded or reply.runaway:
            log_event(question, reply)

    def reply(self, question: str, context: str = "", **options) -> Reply:
        """The whole answer with its sources and flags (the joined stream)."""
        reply = Reply()
        for _ in self.stream(question, context, reply=reply, **options):
            pass
        return reply

    def answer(self, question: str, context: str = "", **options) -> str:
        """The whole answer as one string: the joined stream."""
        return "".join(self.stream(question, context, **options))

    def reply_batch(self, items: list[tuple], *, max_new_tokens: int = 256,
                    batch_size: int = 8, temperature: float = 0.0,
                    top_p: float = 0.9) -> list[Reply]:
        """Replies to (question, context[, history]) items through `stream`'s grounding, guard
        and fallback, `batch_size` at a time where the engine batches (eval, preference pairs)."""
        replies = [Reply() for _ in items]
        todo = []  # (reply, grounding)
        joined = []  # (reply, its parts' replies) of questions with two asks
        for reply, item in zip(replies, items):
            grounding = self.ground(*item)
            parts, subs = [grounding], [reply]
            if grounding.parts:
                parts, subs = grounding.parts, [Reply() for _ in grounding.parts]
                joined.append((reply, subs))
            for part, sub in zip(parts, subs):
                if not self._settled(part, sub):
                    sub.prompt = self.prompt(part, max_new_tokens)
                    todo.append((sub, part))
        options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            outputs = generate(self.engine, [reply.prompt for reply, _ in chunk], options)
            for (reply, grounding), (text, looped, cut) in zip(chunk, outputs):
                reply.runaway, reply.cut = looped, cut
                if self.grounder is None:
                    reply.text = reply.generated = text
                    continue
                shown = grounding.guard(self.rag)
                # fed word by word, as a stream is: the guard releases and trips as it would live
                reply.text = "".join(shown.feed(word) for word in re.split(r"(?<=\s)", text))
                reply.text += "" if looped or shown.tripped else shown.finish(cut=cut)
                settle(reply, shown, grounding.hits, self.rag.decline_message)
        for reply, subs in joined:
            combine(reply, subs)
        return replies


def ready(bot: Chatbot, model: bool = True) -> None:
    """Load now what the first answer would wait for (Kiwi, the knowledge's per-entry
    caches and, with `model`, the engine's first step): `builder serve` calls it before it
    listens, so the first customer is answered as fast as the next."""
    grounding = Grounding("안녕하세요")
    if bot.grounder is not None and bot.knowledge.entries:
        question = bot.knowledge.entries[0].question
        bot.knowledge.exact(question)
        grounding = bot.grounder.ground(question, exact=False)
        if grounding.hits:
            grounding.guard(bot.rag).feed(grounding.hits[0].entry.answer[:20])
    if model and bot.engine is not None:  # a prompt as long as an answer's: the
        # model's buffers are sized for it
        for _ in bot.engine.stream(bot.prompt(grounding, 1), max_new_tokens=1):
            pass


def warm_entries(bot: Chatbot, stop_event: threading.Event | None = None) -> int:
    """With the llama.cpp engine: keep a KV state for every FAQ entry as the first in a
    prompt, so a question whose best entry it is starts there. The entries warmed."""
    if bot.engine is None:
        return 0  # (builder serve warms the model once it is put in)
    if not hasattr(bot.engine, "warm"):
        raise UserError("--warm reads the FAQ into llama.cpp: add --use gguf")
    # each state ends after its entry, where the next entry or the question follows in a
    # prompt whose first entry it is: that prompt continues it
    warmed, more = 0, "\x00"
    for entry in bot.knowledge.entries if bot.knowledge is not None else []:
        if stop_event is not None and stop_event.is_set():
            break
        faq = bot.template.render_faq([entry])
        prompt = bot.template.render("", "", f"{faq}\n\n{more}")
        warmed += bot.engine.warm(prompt[:prompt.index(more)] if more in prompt else prompt)
    return warmed


def generate(engine, prompts: list[str], options: dict) -> list[tuple[str, bool, bool]]:
    """[(answer, looped, cut)] for prompts: the engine's batch, or its stream one at a time."""
    if hasattr(engine, "batch"):
        return engine.batch(prompts, **options)
    outputs = []
    for prompt in prompts:
        flags = Reply()
        text = "".join(engine.stream(prompt, flags=flags, **options))
        outputs.append((text, flags.runaway, flags.cut))
    return outputs


def log_event(question: str, reply: Reply) -> None:
    """The fact guard or the runaway check stepped in: a line in the server's log (the doors
    store the whole answer, with why and the model's own text, in the conversation log)."""
    log.info("%s: %r -> %s (%s)", "fact guard" if reply.guarded else "runaway check", question,
             "fallback to the best entry" if reply.fallback else "answer cut", reply.why)


def load_chatbot(run_dir: str | Path, use: str = "auto", *, engine: str = "local",
                 engine_model: str | None = None, device: str | None = None,
                 gguf_file: str | Path | None = None, faq_first: bool = False,
                 settings: list[str] = (), parallel: int | None = None) -> Chatbot:
    """A run folder's chatbot. `engine` "local" generates in this process: use "auto" (merged/
    when present, else base model + adapter/), "merged", "adapter" (transformers) or "gguf"
    (llama.cpp: `gguf_file`, else the one RUN/gguf/report.json chose); a URL generates at
    that OpenAI-compatible completion server. `faq_first`: a run still training (its knowledge
    built, its model not there yet) gets a bot without an engine, answering from the FAQ.
    `settings`: rag.KEY=VALUE for this bot only (builder serve --set); `parallel`: answers the
    GGUF engine generates together (default its own)."""
    if use not in USES:
        raise ValueError(f"use must be one of {', '.join(USES)}, not {use!r}")
    run, waiting = Run(run_dir), False
    if faq_first and engine == "local" and use != "gguf" and not run.has_model():
        if not (run.template_path.is_file() and run.has_knowledge()):
            raise UserError(f"{run.path}: no model and no FAQ knowledge yet. While `builder "
                            "train` runs, the FAQ answers start once it has indexed the FAQ "
                            f"(under a minute); else {run.make('train')}")
        waiting = run.template().grounded
    # what the engine needs is checked before the knowledge loads
    generator = None if waiting else load_engine(run.require(), use, engine=engine,
                                                 engine_model=engine_model, device=device,
                                                 gguf_file=gguf_file, check=True)
    template, rag = run.template(), serving_rag(run, settings)
    knowledge = None
    if template.grounded:
        from builder.answering.knowledge import Knowledge

        knowledge = Knowledge.load(run.require_knowledge().knowledge_dir)
    if generator is not None:
        generator = generator(rag=rag, parallel=parallel)
    return Chatbot(generator, template, knowledge=knowledge, rag=rag)
