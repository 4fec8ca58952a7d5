"""Which customers' questions ask the same thing: the inbox groups them so the owner answers once.

    from builder.owner.grouping import Asked, same_question, cluster
    asked = [Asked.of(q, knowledge) for q in ["배송비 얼마예요?", "택배비 얼마죠?", "반품 배송비는요?"]]
    same_question(asked[0], asked[1])    # True
    cluster(asked)                       # [[0, 1], [2]]: indices, each group's first the seed

Two questions are the same when
1. e5 finds them close: cosine of their query embeddings at least SAME_COSINE;
2. they are about the same things: no content noun of one is missing from the other (through
   the knowledge's lexicon: 택배비 is 배송비), except a noun used as a verb on one side only
   (판매하나요/팔아요). e5 alone puts "배송비 얼마예요?" and "반품 배송비는요?" at 0.969, above
   most paraphrases;
3. they ask for the same kind of thing: where, when, how much, how, who, why, a phone number,
   or (no question word) whether ("원두 얼마예요?" vs "원두 어디서 사요?": same nouns, 0.957).

Measured with e5-small and the shipped lexicon. No cosine threshold separates them: 14
paraphrase pairs ("배송비 얼마예요?"/"택배비 얼마죠?") score 0.918-0.986, 14 pairs about different
things 0.872-0.969, 8 pairs with the same nouns asking another thing ("원두 얼마예요?"/"원두 어디서
사요?") 0.923-0.966; at 0.92 cosine alone keeps 13/14 paraphrases together and 8/14 different
pairs apart. These rules at SAME_COSINE 0.90 (0.88 gives the same, 0.92 one less) keep 13/14 paraphrases
and 5/5 same-noun paraphrases together and all 22 different pairs apart; on 20 pairs written
afterwards they kept all 10 different pairs apart but only 3/10 paraphrases together (those
use other words for the same thing: 해외/외국, 대량 구매/많이 사면). A question split from its
paraphrase costs the owner one more answer; one merged into another's group would be marked
resolved unanswered, so the rules err on the side of splitting.
"""

import re
import unicodedata
from dataclasses import dataclass, field
from itertools import pairwise

from builder.answering.text import Query, analyse, kiwi, squeeze

SAME_COSINE = 0.90
# What a question asks for, by its wording: two questions naming different ones differ
ASKS = {
    "where": re.compile(r"어디|위치|오시는\s*길"),  # not 주소: often the delivery address
    "when": re.compile(r"언제|며칠|몇\s*(?:일|시(?!간)|영업일)|얼마나\s*걸|기간|마감|"
                       r"(?:영업|운영)\s*시간"),
    "how much": re.compile(r"얼마(?!\s*(?:나|동안|만에|간))|가격|비용|요금|금액|몇\s*원"),
    "how": re.compile(r"어떻게(?!\s*(?:되|돼))|어떡|방법|사용법|절차"),  # 어떻게 돼요: "what is"
    "who": re.compile(r"누가|누구"),
    "why": re.compile(r"왜|이유"),
    "phone": re.compile(r"전화\s*번호|연락처"),
}
# the words that name an ask are rule 3's, not topic nouns of rule 2
ASK_NOUNS = frozenset({"위치", "기간", "마감", "영업시간", "운영시간", "가격", "비용",
                       "요금", "금액", "방법", "사용법", "절차", "이유", "전화번호", "연락처"})


@dataclass
class Asked:
    """One wording of a question, analysed once: its words (the lexicon's added), its asks and
    its embedding."""

    text: str
    query: Query
    asks: frozenset = frozenset()
    canon: dict = field(default_factory=dict)  # noun -> the lexicon's words for it
    verbal: frozenset = frozenset()  # nouns used as a verb: 판매(하다), 처리(되다)

    @classmethod
    def of(cls, text: str, knowledge=None) -> "Asked":
        """`text` read with the knowledge's lexicon and embedder (the default e5 without one)."""
        if knowledge is not None:
            query = knowledge.query(analyse(text))
            lexicon = knowledge.lexicon
        else:
            from builder.answering.embedder import DEFAULT_EMBEDDER, embedder

            query, lexicon = analyse(text), None
            query.vector = embedder(DEFAULT_EMBEDDER).query([text])[0]
        flat = unicodedata.normalize("NFC", text)
        asks = {name for name, pattern in ASKS.items() if pattern.search(flat)}
        # no question word: it asks whether ("디카페인 원두 있어요?"), which "how do I" also
        # does ("주문 취소 어떻게 해요?" is "주문 취소하고 싶어요")
        asks = frozenset(asks | {"whether"} if not asks or "how" in asks else asks)
        canon = {n: set(lexicon.canons([n])) if lexicon else set() for n in query.nouns}
        tokens = kiwi().tokenize(flat)
        verbal = frozenset(t.form.lower() for t, after in pairwise(tokens)
                           if after.tag in ("XSV", "XSA") or (  # Kiwi reads 처리되 as VV too
                               after.form in ("하", "되") and after.tag == "VV"
                               and t.start + t.len == after.start))
        return cls(text, query, asks, canon, verbal)

    def lacks(self, other: "Asked") -> set[str]:
        """This question's topic nouns that `other` does not mention, in any word of the group."""
        words = set(other.query.morphemes) | set(other.query.nouns)
        return {n for n in self.query.nouns - ASK_NOUNS
                if n not in words and not self.canon[n] & words}


def cosine(a: Asked, b: Asked) -> float:
    return float(a.query.vector @ b.query.vector)


def same_question(a: Asked, b: Asked, threshold: float = SAME_COSINE) -> bool:
    if squeeze(a.text) == squeeze(b.text):
        return True
    if not a.asks & b.asks:
        return False
    a_lacks, b_lacks = a.lacks(b), b.lacks(a)
    # a noun used as a verb may be said with another verb ("판매하나요"/"팔아요"), but not
    # when both sides name one the other lacks ("취소하고 싶어요"/"변경하고 싶어요")
    if a_lacks - a.verbal or b_lacks - b.verbal or (a_lacks and b_lacks):
        return False
    return cosine(a, b) >= threshold


def cluster(asked: list[Asked], threshold: float = SAME_COSINE) -> list[list[int]]:
    """Greedy: in the given order (most asked first), each question joins the first group whose
    seed it is the same question as, else seeds a new group. Indices into `asked`."""
    groups: list[list[int]] = []
    for i, question in enumerate(asked):
        home = next((g for g in groups if same_question(asked[g[0]], question, threshold)), None)
        if home is None:
            groups.append([i])
        else:
            home.append(i)
    return groups
