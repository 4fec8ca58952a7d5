"""Korean question rewrites by rule: how customers actually type a FAQ question.

    rewrites("배송비는 얼마인가요?")
    # ['배송비 얼마', '배송비 얼마인가요?', '배송비는 얼마임?', '배송비는얼마인가요?',
    #  '배송비는 얼마인가여?', '얼마인가요, 배송비는?', '배송비 얼마임?']

Training rows carry these instead of the FAQ's own wording, so the model learns to find the
entry that answers a question worded differently (a model that only ever saw exact copies
answers only exact copies). Rules: keyword-only query, dropped particles, casual endings and
반말, typos (no spaces, 요 -> 여), word order; and one combination. Pure text functions over
Kiwi morphemes; the same question always gives the same list.
"""

import re

from builder.answering.text import kiwi

# sentence endings, polite -> casual (first match wins); endings with 요 otherwise lose it
CASUAL_ENDINGS = [
    (r"할 수 있나요\?$", "할 수 있어?"),
    (r"수 있나요\?$", "수 있어?"),
    (r"있나요\?$", "있어?"),
    (r"없나요\?$", "없어?"),
    (r"되나요\?$", "돼?"),
    (r"인가요\?$", "임?"),
    (r"하나요\?$", "해?"),
    (r"나요\?$", "나?"),
    (r"(을|ㄹ)까요\?$", r"\1까?"),
    (r"주세요\.?$", "줘"),
    (r"주시나요\?$", "줘?"),
    (r"예요\?$", "야?"),
    (r"이에요\?$", "이야?"),
    (r"어요[.?]?$", "어"),
    (r"아요[.?]?$", "아"),
    (r"요\?$", "?"),
    (r"요\.$", ""),
]
KEYWORD_TAGS = ("NNG", "NNP", "NNB", "NR", "SN", "SL", "SH", "XR", "MM", "W_SERIAL")


def keywords(question: str) -> str:
    """'몇 시까지 주문하면 오늘 출발하나요?' -> '몇 시 주문 오늘 출발'"""
    return " ".join(t.form for t in kiwi().tokenize(question) if t.tag in KEYWORD_TAGS)


def drop_particles(question: str) -> str:
    """'배송비는 얼마인가요?' -> '배송비 얼마인가요?' (조사 left out, as in chat)."""
    tokens = [t for t in kiwi().tokenize(question) if not t.tag.startswith("J")]
    return kiwi().join(tokens) if tokens else question


def casual(question: str) -> str:
    """Polite ending -> 반말 / chat ending: '매장 위치가 어디인가요?' -> '매장 위치가 어디임?'"""
    text = question.strip()
    for pattern, replacement in CASUAL_ENDINGS:
        changed = re.sub(pattern, replacement, text)
        if changed != text:
            return changed
    return text


def typo(question: str) -> str:
    """The typos of fast typing on a phone: 요 -> 여, or no spaces at all."""
    if "요" in question:
        return question.replace("요", "여")
    return question.replace(" ", "")


def no_spaces(question: str) -> str:
    return question.replace(" ", "")


def reorder(question: str) -> str:
    """'배송비는 얼마인가요?' -> '얼마인가요, 배송비는?' (topic moved to the end)."""
    words = question.rstrip("?.!").split()
    if len(words) < 2 or len(words[0]) < 2:  # "몇 시..." cannot lose its 몇
        return question
    mark = "?" if question.rstrip().endswith("?") else ""
    return f"{' '.join(words[1:])}, {words[0]}{mark}"


RULES = (keywords, drop_particles, casual, no_spaces, typo, reorder)


def rewrites(question: str) -> list[str]:
    """Every distinct rewrite of `question` (never the question itself), in rule order."""
    out: list[str] = []
    candidates = [rule(question) for rule in RULES] + [casual(drop_particles(question))]
    for text in candidates:
        text = " ".join(text.split())
        if text and text != question and text not in out:
            out.append(text)
    return out or [question]
