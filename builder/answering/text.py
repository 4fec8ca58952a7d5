"""Korean text as the knowledge reads it: Kiwi morphemes, content nouns, the fact a question
asks for, and `Query`, a question analysed once per answer.

    from builder.answering.text import analyse
    q = analyse("매장 몇 시에 문 열어요?")
    q.morphemes, q.nouns, q.units        # ['매장', '시', '문', '열'], {'매장', '문'}, {'시'}

Retrieval (BM25 terms), the decline gate (shared nouns, coverage) and the reranking by the asked
fact all read the same analysis: one Kiwi pass per question, not one per retrieved entry.
"""

import functools
import re
import unicodedata
from dataclasses import dataclass, field

# Kiwi tags kept for BM25: nouns, numbers, foreign words, roots, verb and adjective stems
CONTENT_TAGS = ("NNG", "NNP", "NR", "SN", "SL", "SH", "XR", "VV", "VA", "W_SERIAL")
NOUN_TAGS = ("NNG", "NNP", "SL", "SH", "XR")
# nouns every shop question may carry; sharing one says nothing about the topic
GENERIC_NOUNS = frozenset({"얼마", "며칠", "정도", "이상", "이하", "경우", "가능", "방법", "문의",
                           "질문", "답변", "시간", "오늘", "지금", "하나", "다음", "이번", "사람"})
# What a question asks for, told by its wording, as the fact units (builder.facts)
# that answer it: "매장 몇 시에 문 열어요?" wants an hour, so among the best few entries one that
# states an hour goes before one that states none ("명절에도 문 여나요?" shares more words)
ASKED_UNITS = (
    (re.compile(r"전화\s*번호|연락처|번호\s*(?:좀|뭐|알려)"), frozenset({"tel"})),
    (re.compile(r"가격|요금|비용|금액|수강료|추가금|몇\s*원|얼마(?!\s*(?:나|동안|만에|간))"),
     frozenset({"원"})),
    (re.compile(r"며칠|몇\s*(?:일|영업일)"), frozenset({"일", "영업일"})),
    (re.compile(r"몇\s*(?:프로|퍼센트|%)|할인율"), frozenset({"%"})),
    (re.compile(r"몇\s*시(?!간)"), frozenset({"시"})),
    (re.compile(r"몇\s*(시간|분|개월|주|년|개|명|석|잔|봉|도|mg|ml|g)"), None),  # that unit
)


@functools.lru_cache(maxsize=1)
def kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()  # ~1.2 s to load: once per process


def _tokens(text: str):
    return kiwi().tokenize(unicodedata.normalize("NFC", text))


def content_morphemes(text: str) -> list[str]:
    return [t.form.lower() for t in _tokens(text) if t.tag in CONTENT_TAGS]


def content_nouns(text: str) -> set[str]:
    return {t.form.lower() for t in _tokens(text) if t.tag in NOUN_TAGS} - GENERIC_NOUNS


def asked_units(question: str) -> frozenset[str]:
    """The fact units that answer `question` ("몇 시" -> {"시"}); empty when it asks for none."""
    question = unicodedata.normalize("NFC", question)
    units: set[str] = set()
    for pattern, wanted in ASKED_UNITS:
        for match in pattern.finditer(question):
            units |= wanted if wanted is not None else {match[1].replace("도", "℃")} | {match[1]}
    return frozenset(units)


def squeeze(text: str) -> str:
    """Letters and digits only, NFC, lower-case: '배송비는 얼마인가요?' -> '배송비는얼마인가요'."""
    return "".join(ch for ch in unicodedata.normalize("NFC", text).lower() if ch.isalnum())


@dataclass
class Query:
    """A question analysed once: its content morphemes (BM25 terms, coverage), its content
    nouns (the gate's shared-noun rule), the fact units it asks for and, once the knowledge has
    embedded it, its vector."""

    text: str
    morphemes: list[str]
    nouns: set[str]
    units: frozenset[str]
    vector: object = field(default=None, repr=False)
    expanded: bool = False  # the knowledge's lexicon words added (Knowledge.query)
    synonyms: set = field(default_factory=set)  # those the customer's own words brought in


def analyse(question: str) -> Query:
    tokens = _tokens(question)
    return Query(question, [t.form.lower() for t in tokens if t.tag in CONTENT_TAGS],
                 {t.form.lower() for t in tokens if t.tag in NOUN_TAGS} - GENERIC_NOUNS,
                 asked_units(question))
