"""What a grounded answer may show: the fact guard, the runaway check and the reply record.

    reply = Reply()
    shown = GuardedText(sources=[entry texts, question, context])
    for delta in model_deltas:
        text = shown.feed(delta)           # released sentence by sentence, once checked
        if shown.tripped: break
    text = shown.finish()

The fact guard: a sentence is shown only once it is complete and every number it states
(price, days, hours, size, percentage, phone number; builder.facts) is found in the FAQ entries
the answer was given or in the customer's own words. When a sentence states a number found
nowhere, the answer stops there; if nothing was shown yet the bot falls back to the best entry's
own answer. While the answer copies an entry's answer word for word (what a grounded model
mostly does) it is shown as it comes: copied text states only that entry's facts, and should
the model leave the entry for a number found nowhere, the rest of that entry's answer completes
it (`copied_rest`); so does the entry's rest when the copy changes one of its numbers ("100개
이상은 10%, 500개 이상은 15%" copied as "100개 이상은 15%"). A copy of an entry that matches the
question less well than the best entry is not shown either (`may_copy`): the best entry's answer
is. The runaway check ends a generation whose last tokens repeat an earlier stretch.
"""

import re
import unicodedata
from dataclasses import dataclass, field

from builder.facts import invented

# where a sentence ends: ". " "? " "! " "\n", or a Korean sentence ending before a space
SENTENCE_END = re.compile(r"(?<=[.!?…。])\s+|\n+|(?<=[다요죠네])(?=\s)")
RUNAWAY_NGRAM = 8  # tokens: the last 8 already generated twice before = a loop
OPENING_CHARS = 8  # letters and digits an answer's opening needs before it can be judged
RUNAWAY_REPEATS = 3  # a fact said twice ("배송비 3,000원 ... 반품 배송비 3,000원") is no loop


@dataclass
class Reply:
    """One answer and how it came about (for the doors, the logs and the eval)."""

    text: str = ""
    sources: list = field(default_factory=list)  # knowledge Hits the answer was given
    declined: bool = False  # the answer is the decline message
    gated: bool = False  # declined before generating: nothing in the FAQ is about the question
    exact: bool = False  # an FAQ question word for word: the entry's own answer, not generated
    guarded: bool = False  # the fact guard cut the model's answer or replaced it
    fallback: bool = False  # ... replaced by the best entry's own answer
    runaway: bool = False  # the runaway check ended a repeating generation
    cut: bool = False  # max_new_tokens ended it unfinished (the doors say finish_reason "length")
    faq_only: bool = False  # the best entry's own answer: no trained model answered (yet)
    invented: list = field(default_factory=list)  # facts the model stated that no source has
    generated: str = ""  # the model's own text, before the guard
    why: str = ""  # why the guard stepped in (for the log)
    prompt: str = ""  # the prompt the engine was given (empty when nothing was generated)


def combine(reply: Reply, parts: list[Reply]) -> Reply:
    """Fill `reply` with the replies to a question's asks, shown one after the other."""
    reply.text = "\n".join(p.text for p in parts if p.text)
    reply.sources = [h for p in parts for h in p.sources]
    for flag in ("declined", "gated", "exact"):
        setattr(reply, flag, all(getattr(p, flag) for p in parts))
    for flag in ("guarded", "fallback", "runaway", "cut", "faq_only"):
        setattr(reply, flag, any(getattr(p, flag) for p in parts))
    reply.invented = [f for p in parts for f in p.invented]
    reply.generated = "\n".join(p.generated for p in parts)
    reply.why = "; ".join(p.why for p in parts if p.why)
    reply.prompt = "\n\n".join(p.prompt for p in parts if p.prompt)
    return reply


def runaway(ids: list[int], n: int = RUNAWAY_NGRAM, repeats: int = RUNAWAY_REPEATS) -> bool:
    """True when the last n ids occur `repeats` times in `ids` (overlaps counted): a loop.
    Gemma spells numbers digit by digit, so an answer that names one price twice repeats 8
    tokens once; a loop keeps repeating them."""
    if len(ids) < n * repeats - (n - 1) or len(ids) < n + 1:
        return False
    tail = ids[-n:]
    seen = sum(ids[i:i + n] == tail for i in range(len(ids) - n + 1))
    return seen >= repeats


def letters(text: str) -> str:
    """The letters and digits of `text` (NFC), spaces and punctuation left out."""
    return "".join(ch for ch in unicodedata.normalize("NFC", text) if ch.isalnum())


def _bigrams(text: str) -> set[str]:
    text = letters(text)
    return {text[i:i + 2] for i in range(len(text) - 1)}


def overlap(text: str, sources: list[str]) -> float:
    """The largest share of `text`'s character bigrams (spaces and punctuation aside) that
    one of `sources` has (0 for none)."""
    mine = _bigrams(text)
    if not mine:
        return 0.0
    return max((len(mine & _bigrams(source)) / len(mine) for source in sources), default=0.0)


def supported(text: str, sources: list[str], floor: float = 0.3) -> bool:
    """Does the answer come from one of its sources? At least `floor` of its character bigrams
    occur in one source (`overlap`). A grounded answer copies or rewords an entry; an echo of
    the question or an answer from nowhere shares little with any answer."""
    return overlap(text, sources) >= floor


def echoes(text: str, questions: list[str], shortest: int = 4) -> bool:
    """Does the answer open with one of the questions (or context lines) it was shown, or is
    it the start of one? A small model sometimes copies an entry's question line ("실버 등급이
    되려면 얼마나 더 사야 하나요?"), its situation ("회원등급: 실버, 결제 예정 금액 40,000원"),
    the first words of either ("현재 6개월 구매 금액 92,000원") or of the customer's question
    ("구독 중에 원두 더 사면 할인") instead of an answer: none is an answer."""
    said = letters(text)
    return any(len(q) >= shortest and (said.startswith(q) or len(said) >= OPENING_CHARS
                                       and q.startswith(said)) for q in map(letters, questions))


def is_decline(text: str, decline_message: str) -> bool:
    squeeze = lambda s: "".join(unicodedata.normalize("NFC", s).split())  # noqa: E731
    head = squeeze(decline_message)[:24]
    return bool(head) and squeeze(text).startswith(head)


class GuardedText:
    """Releases a growing answer sentence by sentence (a copied answer as it comes), after
    checking each one's facts, and its opening before anything is shown."""

    def __init__(self, sources: list[str], enabled: bool = True, answers: list[str] = (),
                 questions: list[str] = (), decline_message: str = "",
                 may_copy: list[str] | None = None, asked: list[str] = (),
                 customer: list[str] = ()):
        self.sources = sources
        self.customer = list(customer)  # numbers the answer may say back only as the customer's
        self.enabled = enabled  # the fact check; the opening is checked whenever entries are given
        self.questions = list(questions)  # entries' question and context lines: not an answer
        # nor is the customer's own question or context said back ("반품 배송비" may open an
        # answer, so only a line of OPENING_CHARS letters or more counts when it opens one)
        self.asked = [line for line in asked if line]
        self.entry_answers = [a for a in answers if a]  # an answer comes from one of them
        self.decline_message = decline_message
        # text copied from an entry's answer is shown as it comes
        self.answers = [unicodedata.normalize("NFC", a) for a in self.entry_answers]
        self.copying = bool(self.answers)
        # the answers a copy may come from (None: any); the others fit the question less well
        self.may_copy = (None if may_copy is None
                         else {unicodedata.normalize("NFC", a) for a in may_copy})
        self.fitting_answers = [a for a in self.entry_answers  # the ones an answer may reword
                                if self._may_copy(unicodedata.normalize("NFC", a))]
        self.text = ""  # everything generated so far
        self.released = 0  # characters of `text` already shown
        self.opened = False  # the opening was judged (or a whole copied sentence opened it)
        self.tripped = False
        self.invented: set = set()
        self.echoed = False  # it said back a question or context line (an entry's, the customer's)
        self.unsupported = False  # its opening comes from no entry's answer
        self.reselected = False  # it copied an entry that fits the question less than the best
        self.changed = False  # it copied an entry's answer but changed one of its numbers
        self.cut = False  # the token limit ended it inside a sentence or a copy

    def _check(self, upto: int) -> bool:
        found = (invented(self.text[:upto], self.sources, self.customer) if self.enabled
                 else set())
        if found:
            self.tripped, self.invented = True, found
        return not found

    def _opening(self, upto: int, final: bool = False) -> bool | None:
        """May the answer's first `upto` characters be shown? Not when they copy an entry's
        question or context line, nor when they share too little with every entry's answer
        (words from nowhere, an echo of the customer's question) or with every entry it may
        copy (`may_copy`); the decline message may always be said. None: too short to tell yet
        ("네")."""
        text = self.text[:upto]
        if echoes(text, self.questions) or echoes(text, self.asked, OPENING_CHARS):
            self.tripped = self.echoed = True
        elif self.entry_answers and not is_decline(text, self.decline_message):
            if len(letters(text)) < OPENING_CHARS:
                if not final:
                    return None
                if letters(text) not in map(letters, self.entry_answers):
                    self.tripped = self.unsupported = True  # a fragment ("10g"), no answer
                    return False
            if not supported(text, self.entry_answers):
                self.tripped = self.unsupported = True
            elif overlap(text, self.questions + self.asked) > overlap(text, self.entry_answers):
                # it rewords a question or context line ("현재 6개월 구매 금액 92,000원" for
                # "회원등급: 브론즈, 최근 6개월 구매 금액 92,000원") more than any answer
                self.tripped = self.echoed = True
            elif not supported(text, self.fitting_answers):  # it rewords a less fitting entry
                self.tripped = self.reselected = True
        return not self.tripped

    def feed(self, delta: str) -> str:
        """Add generated text; return what may be shown now (complete, checked sentences)."""
        if self.tripped:
            return ""
        self.text += delta
        out = ""
        if self.copying:  # still copying an entry's answer: release it as it comes
            text = unicodedata.normalize("NFC", self.text)
            still = [a for a in self.answers if a.startswith(text)]
            if len(text) != len(self.text):
                still = []  # (normalising changed it: no longer word for word)
            if still and not any(map(self._may_copy, still)):  # only entries that fit less
                if len(letters(text)) < OPENING_CHARS:
                    return ""  # "네, " opens many answers: judged once it says more
                self.tripped = self.reselected = True
                return ""
            if not still and self._changes_a_number(text):
                self.tripped = self.changed = True
                return ""
            self.copying = bool(still)
            if self.copying:
                self.answers = still  # (when it leaves them, the ones it copied are kept)
                # (a number half written, "3,0", is safe: should the copy change it, the rest
                # of the entry's answer completes what was shown)
                out, self.released = self.text[self.released:], len(self.text)
                # a whole copied sentence is an opening; a copy that ends sooner ("배송비는 "
                # then "얼마인가요?") is judged whole when its sentence ends
                self.opened = self.opened or any(
                    0 < m.start() < self.released for m in SENTENCE_END.finditer(self.text))
        ends = [m.start() for m in SENTENCE_END.finditer(self.text) if m.start() > self.released]
        for end in ends:  # one sentence at a time: stop at the first one with an invented fact
            if not self.opened:
                opening = self._opening(end)
                if opening is None:
                    continue  # judged with the next sentence
                if not opening:
                    break
                self.opened = True
            if not self._check(end):
                break
            out += self.text[self.released:end]
            self.released = end
        return out

    def why(self) -> str:
        """Why the guard tripped, in the log's words ('' if it did not)."""
        reasons = [(self.invented, "a fact in no entry"), (self.echoed, "a question said back"),
                   (self.unsupported, "words from no entry's answer"),
                   (self.reselected, "an entry fitting the question less than the best"),
                   (self.changed, "an entry's answer with a number changed"),
                   (self.cut, "cut by the token limit")]
        return next((why for flag, why in reasons if flag), "")

    def _may_copy(self, answer: str) -> bool:
        return self.may_copy is None or answer in self.may_copy

    def _changes_a_number(self, text: str) -> bool:
        """Did the copy leave its entry's answer inside a number, or to say a number: a copied
        sentence with a number changed ("100개 이상은 15%" for "100개 이상은 10%, 500개 이상은
        15%")? Rewording elsewhere ("3,000원입니다" for "3,000원이며") is fine."""
        for answer in self.answers:
            at = next((i for i, (a, b) in enumerate(zip(answer, text)) if a != b), None)
            if at is None or len(letters(text[:at])) < OPENING_CHARS:
                continue  # a whole copy goes on, or too little was copied to call it a copy
            if text[at].isdigit() or text[at - 1].isdigit():  # it says a number of its own
                return True
        return False

    def copied_rest(self) -> str:
        """After the guard tripped: the rest of the entry answer that everything shown so far
        was copied from ('' if it was not copied, or nothing was shown)."""
        shown = unicodedata.normalize("NFC", self.text[:self.released])
        if not shown.strip():
            return ""
        for answer in filter(self._may_copy, self.answers):
            if answer.startswith(shown):
                return answer[len(shown):]
        return ""

    def finish(self, cut: bool = False) -> str:
        """The generation ended: check and release the rest. `cut`: the token limit ended it,
        so its last sentence (or the copy) is unfinished and never shown: "기본 배송비는 3"
        would state a price the entry does not (a cut copy is completed from its entry)."""
        if cut and not self.tripped and (self.copying or self.released < len(self.text)):
            self.tripped = self.cut = True
            return ""
        if not self.tripped and not self.opened:
            self._opening(len(self.text), final=True)
        if self.tripped or not self._check(len(self.text)):
            return ""
        out, self.released = self.text[self.released:], len(self.text)
        return out


def settle(reply: Reply, shown: GuardedText, hits: list, decline_message: str) -> str:
    """After the guard saw the whole answer: fill in the reply's flags and return the fallback
    text to add ('' if none): the best entry's own answer when nothing could be shown, or the
    rest of the entry a cut copy was taking its answer from."""
    reply.generated, reply.invented = shown.text, sorted(shown.invented)
    reply.why = shown.why() or ("a repeating loop" if reply.runaway else "")
    added = ""
    if not reply.text.strip():  # nothing shown (tripped, looped, empty): the best entry's
        reply.guarded = reply.fallback = True  # own answer instead
        reply.sources, reply.cut = hits[:1], False
        added = reply.text = hits[0].entry.answer
    elif (shown.tripped or reply.runaway) and (rest := shown.copied_rest()):
        # cut while copying an entry's answer: the rest of that answer completes it
        reply.guarded = reply.fallback = True
        reply.cut = False  # (whole again)
        reply.sources = [h for h in hits if h.entry.answer.endswith(rest)][:1] or hits[:1]
        added, reply.text = rest, reply.text + rest
    elif shown.tripped:
        reply.guarded = True
    if is_decline(reply.text, decline_message):
        reply.declined, reply.sources = True, []
    return added
