"""The grounding step: what the FAQ says about one question of a conversation, the one place
where an answer is looked up. Every door (page, terminal, API), the eval, the preference pairs
and the export check call it through `Chatbot.ground`; none of them retrieves on its own.

    grounder = Grounder(knowledge, rag, template)
    g = grounder.ground("제주는요?", history=["배송비는 얼마인가요?"])
    g.exact, g.declined        # settled without generating: the FAQ's own answer, or decline
    g.hits, g.faq              # the entries the prompt carries, and their FAQ block

The rules, in order:
1. A question that is an FAQ question word for word (with the same context) gets that entry's
   own answer (`exact`), unless the caller asks for the model's own answer.
2. A short follow-up (at most FOLLOW_UP_CHARS letters, "제주도는요?") after an earlier question
   is also searched with that question in front; the two searches' hits are interleaved, and
   it passes the gate when it does alone or together with the earlier question.
3. The gate (builder.answering.gate) declines a question the FAQ says nothing about.
4. With rag.prompt_entries "fitting", the prompt carries only the hits that cover the question
   as well as the best one (a follow-up keeps both questions' hits: they are its context).
5. A question joining two asks ("배송비랑 반품비 각각 얼마예요?", `two_asks`) whose two halves
   each pass the gate with different best entries is answered in two `parts`, each grounded,
   generated and fact-checked against its own entries, and shown one after the other.
The question is analysed once (builder.answering.text.Query) for all of it, under one lock:
Kiwi and the embedder are shared by answers generated side by side.
"""

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from builder.answering.guard import GuardedText

FOLLOW_UP_CHARS = 8  # letters (spaces and punctuation aside): "제주도는요?" is 5


@dataclass
class Grounding:
    """What the FAQ says about one question."""

    question: str
    context: str = ""
    earlier: str = ""  # the earlier question a short follow-up was read with ('' if none)
    hits: list = field(default_factory=list)  # the entries the prompt carries, best first
    faq: str = ""  # the hits as the template's FAQ block
    exact: object = None  # the Hit of an FAQ question asked word for word
    declined: bool = False  # the gate found nothing in the FAQ about the question
    may_copy: list[str] = field(default_factory=list)  # answers the guard lets a reply copy
    parts: list = field(default_factory=list)  # the Groundings of a question's two asks

    @property
    def settled(self) -> bool:
        """Answered without generating: the FAQ's own answer, or the decline message."""
        return not self.parts and (self.exact is not None or self.declined)

    def guard(self, rag) -> GuardedText:
        """The fact guard for an answer generated from these hits."""
        hits = self.hits
        # the decline message may name the shop's phone number: the model says it when it
        # declines; the customer's numbers are said back only as theirs (builder.facts)
        sources = [h.entry.text for h in hits] + [rag.decline_message]
        return GuardedText(sources, enabled=rag.fact_guard,
                           customer=[self.question, self.context],
                           answers=[h.entry.answer for h in hits],
                           questions=[line for h in hits
                                      for line in (h.entry.question, h.entry.context) if line],
                           asked=[self.question, self.context],
                           decline_message=rag.decline_message, may_copy=self.may_copy)


def follow_up(question: str, history: Sequence[str]) -> str:
    """The earlier question a short follow-up is read with: the last non-empty one in
    `history` (the customer's earlier messages, oldest first) when `question` is short."""
    earlier = [text.strip() for text in history if text and text.strip()]
    short = sum(ch.isalnum() for ch in question) <= FOLLOW_UP_CHARS
    return earlier[-1] if short and earlier else ""


class Grounder:
    """The grounding step over one knowledge, with the run's retrieval settings and template."""

    def __init__(self, knowledge, rag, template):
        self.knowledge, self.rag, self.template = knowledge, rag, template
        self.lock = threading.Lock()

    def ground(self, question: str, context: str = "", history: Sequence[str] = (), *,
               exact: bool = True) -> Grounding:
        g = self._ground(question, context, history, exact)
        asks = []
        if g.exact is None and not g.earlier:  # a follow-up is read with its earlier question
            with self.lock:  # Kiwi is shared by answers generated side by side
                asks = two_asks(question)
        if asks:
            parts = [self._ground(ask, context, (), exact) for ask in asks]
            tops = [p.hits[0].entry.id for p in parts if p.hits and not p.declined]
            if len(tops) == 2 and tops[0] != tops[1]:
                for p in parts:  # each ask is answered from, and checked against, its own entry
                    p.hits, p.may_copy = p.hits[:1], [p.hits[0].entry.answer]
                    p.faq = self.template.render_faq([p.hits[0].entry])
                g.parts, g.declined = parts, False
                g.hits = [p.hits[0] for p in parts]
        return g

    def _ground(self, question: str, context: str, history: Sequence[str],
                exact: bool) -> Grounding:
        kb, k = self.knowledge, self.rag.k
        g = Grounding(question, context, earlier=follow_up(question, history))
        with self.lock:
            if exact and (hit := kb.exact(question, context)) is not None:
                g.exact, g.hits = hit, [hit]
                return g
            query = kb.query(question)
            # a follow-up is read with its earlier question first: "제주도는요?" after the
            # shipping fee asks for Jeju's shipping fee
            queries = ([kb.query(f"{g.earlier} {question}")] if g.earlier else []) + [query]
            hits = _interleave([kb.search(q, k) for q in queries], k)
            if g.earlier:  # each reading is gated on the entry of both that covers it best
                g.declined = not any(kb.relevant(q, sorted(
                    hits, key=lambda h, q=q: -kb.coverage(q, h.entry))) for q in queries)
            else:
                g.declined = not kb.relevant(query, hits)
            if self.rag.prompt_entries == "fitting" and not g.earlier:
                hits = kb.fitting(query, hits)
            # a lower entry may be copied only if it covers the question as well as the best
            # one: "탈퇴하고 언제 다시 가입?" is not answered with how to leave
            covered = [kb.coverage(query, h.entry) for h in hits]
            g.may_copy = [h.entry.answer for h, c in zip(hits, covered) if c >= covered[0]]
        g.hits = hits
        g.faq = self.template.render_faq([h.entry for h in hits])
        return g


def _interleave(rankings: list[list], k: int) -> list:
    """The first k distinct entries of the rankings taken in turn (one ranking: itself)."""
    if len(rankings) == 1:
        return rankings[0][:k]
    hits, seen = [], set()
    for hit in (h for row in zip(*rankings) for h in row):
        if hit.entry.id not in seen:
            seen.add(hit.entry.id)
            hits.append(hit)
    return hits[:k]


# what joins two asks: 배송비"랑" 반품비, "및", "그리고" (not "나"/"또는": one ask of two options)
JOINING_WORDS = {"와", "과", "랑", "이랑", "하고", "및", "그리고"}


def two_asks(question: str) -> list[str]:
    """The two asks of a question that joins two ("배송비랑 반품비 각각 얼마예요?" ->
    ["배송비 얼마예요?", "반품비 얼마예요?"]; "영업시간 몇 시예요? 주차는 돼요?" -> its two
    sentences); [] for a question asking one thing. Nouns joined by a particle share what
    follows the second noun."""
    from builder.answering.text import kiwi

    tokens = kiwi().tokenize(question)
    for i, t in enumerate(tokens[1:-1], start=1):
        # a sentence ends, or a clause does ("몇 개부터 되고 ...")
        sentence_end = (t.tag == "SF" or (t.tag == "EC" and t.form == "고" and tokens[i - 1].tag
                                          in ("VV", "VA", "VCP", "VX", "XSV", "XSA"))) and any(
            x.tag.startswith("N") for x in tokens[i + 1:])
        after = tokens[i - 1].tag  # a noun (or a sentence) before the joining word
        joins = (t.form in JOINING_WORDS and t.tag in ("JC", "JKB", "MAJ", "MAG")
                 and after in ("NNG", "NNP", "SL", "XR", "SF"))
        if not (sentence_end or joins):
            continue
        left = question[:t.start + (t.len if sentence_end else 0)].strip()
        right = question[t.start + t.len:].strip()
        if sentence_end or tokens[i - 1].tag == "SF":
            asks = [left, right]
        else:  # nouns joined: the left noun is asked what the right one is ("각각 얼마예요?")
            rest = tokens[i + 1:]
            k = 0
            while k < len(rest) and rest[k].tag.startswith("N"):
                k += 1
            while k < len(rest) and (rest[k].tag.startswith("J") or rest[k].form in ("각각",)):
                k += 1
            if k < len(rest):
                tail = question[rest[k].start:].strip()
            else:  # nouns to the end: the last one is what both are asked about ("사용법")
                tail = question[rest[-1].start:].strip() if len(rest) > 1 else ""
            asks = [f"{left} {tail}".strip(), right]
        asks = [" ".join(w for w in a.split() if w not in JOINING_WORDS and w != "각각")
                for a in asks]
        if all(sum(ch.isalnum() for ch in a) >= 2 for a in asks):
            return asks
    return []
