"""The decline gate: is a question about anything the shop's FAQ says? And how well does an
entry cover what it asks?

    from builder.answering.gate import relevant, coverage, fitting
    relevant(knowledge, query, hits)      # False -> answer the decline message
    fitting(knowledge, query, hits)       # the hits an answer may come from

A question passes when it shares a content noun with a retrieved entry, its best dense
similarity reaches the threshold calibrated on this knowledge (`calibrate`), and the best entry
covers at least `coverage_floor` of its IDF-weighted words. `gate_figures` measures the whole
gate on the FAQ's own rewritten questions, the shipped off-topic list and leave-one-out near
misses. Each function takes the knowledge and a `Query` (builder.answering.text), the question
analysed once.
"""

import math
import random
from pathlib import Path

from builder.answering.text import GENERIC_NOUNS

# how far under the dense threshold a question may be when a word the lexicon matched
# (builder.answering.synonyms) is in the best entry: on data/questions/*_dev.csv, customers'
# own words answered 8/41 -> 11/41 (coffee) and 6/26 -> 10/26 (salon), nothing else moved
LEXICON_SLACK = 0.02
COVERAGE_FLOOR = 0.5  # the best entry must hold at least half of the question's word weight
# stems every question may carry whatever it asks about (있다, 되다, 하다, 수, ...)
LIGHT_WORDS = frozenset({"있", "없", "하", "되", "수", "것", "주", "보", "받", "가", "오", "알", "이"})
# the words a question names its asked-for fact with: an entry stating the fact covers them
ASKED_WORDS = frozenset({"가격", "요금", "비용", "금액", "전화번호", "전화", "번호", "연락처",
                         "할인율", "추가금"})
OFF_TOPIC_FILE = Path(__file__).resolve().parents[2] / "prompts" / "off_topic_ko.txt"


def off_topic_questions() -> list[str]:
    """The shipped list of questions a shop bot gets but must not answer (prompts/)."""
    lines = OFF_TOPIC_FILE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def shares_noun(knowledge, query, hits) -> bool:
    return any(query.nouns & knowledge.entry_nouns(h.entry) for h in hits)


def relevant(knowledge, query, hits) -> bool:
    """False when the question shares no content noun with the retrieved entries, its best
    dense similarity is under the calibrated threshold, or the best entry covers too little of
    what it asks (`coverage`)."""
    if not hits:
        return False
    gate = knowledge.settings.get("gate", {})
    threshold = gate.get("dense_threshold")
    # a customer's word the lexicon matched to the best entry's is evidence e5 does not see
    slack = LEXICON_SLACK if query.synonyms & knowledge.entry_terms(hits[0].entry) else 0.0
    close = threshold is None or max(h.dense for h in hits) >= threshold - slack
    floor = gate.get("coverage_floor") or 0.0
    return (shares_noun(knowledge, query, hits) and close
            and (floor <= 0 or coverage(knowledge, query, hits[0].entry) >= floor))


def coverage(knowledge, query, entry) -> float:
    """Share of the question's words found in `entry`, each word weighted by its IDF over this
    FAQ: "새벽배송도 되나요?" against "주말에도 배송이 되나요?" misses 새벽, the word that
    says what is asked. Words the FAQ never uses do not count (they are often a customer's
    synonym: 가게 for 매장), nor do stems any question has (있다, 되다)."""
    idf = knowledge.idf()
    asked = {t for t in query.morphemes
             if t in idf and t not in LIGHT_WORDS and t not in GENERIC_NOUNS}
    total = sum(idf[t] for t in asked)
    if not total:
        return 1.0
    found = knowledge.entry_terms(entry)
    if query.units & knowledge.units(entry.id):  # "가격" is covered by a price
        found = found | ASKED_WORDS
    return sum(idf[t] for t in asked if t in found) / total


def fitting(knowledge, query, hits) -> list:
    """The hits that cover the question as well as the first one does (`coverage`), in their
    order: the entries an answer may come from. The others fit it less ("탈퇴하고 언제 다시
    가입?" is not answered with how to leave)."""
    covered = [coverage(knowledge, query, h.entry) for h in hits]
    return [h for h, c in zip(hits, covered) if c >= covered[0]] if hits else []


def calibrate(knowledge, k: int = 3) -> dict:
    """Pick the dense threshold on this knowledge's own questions: rule-made rewrites of every
    entry's question (should pass) vs the shipped off-topic list (should not). The threshold
    maximises balanced accuracy; the figures of each rule are kept."""
    from builder.answering.rewrite import rewrites

    rng = random.Random(0)
    positives = [rng.choice(rewrites(e.question)) for e in knowledge.entries]
    negatives = off_topic_questions()
    knowledge.prime(positives + negatives)

    def features(question):
        query = knowledge.query(question)
        hits = knowledge.search(query, k)
        return shares_noun(knowledge, query, hits), max(h.dense for h in hits)

    pos = [features(q) for q in positives]
    neg = [features(q) for q in negatives]

    def balanced(passes_pos, passes_neg):
        return round((sum(passes_pos) / len(pos) + (1 - sum(passes_neg) / len(neg))) / 2, 4)

    best = (-1.0, None)
    for threshold in sorted({d for _, d in pos + neg}):
        score = balanced([s and d >= threshold for s, d in pos],
                         [s and d >= threshold for s, d in neg])
        if score > best[0]:
            best = (score, threshold)
    # halfway down to the next lower similarity, so a near-identical paraphrase passes
    lower = [d for _, d in pos + neg if d < best[1]]
    threshold = round((best[1] + max(lower)) / 2, 4) if lower else best[1]
    return {
        "dense_threshold": threshold,
        "balanced_accuracy": {
            "shared_noun": balanced([s for s, _ in pos], [s for s, _ in neg]),
            "dense_threshold": balanced([d >= threshold for _, d in pos],
                                        [d >= threshold for _, d in neg]),
            "both": best[0],
        },
        "positives": len(pos), "negatives": len(neg),
    }


def gate_figures(knowledge, k: int = 3) -> dict:
    """How the whole gate does on this FAQ's own questions: rule rewrites of each question
    (should pass), the shipped off-topic list (should be declined) and leave-one-out near
    misses: each question asked without its own entry and the entries sharing a key fact with
    it (should be declined: no other entry answers it)."""
    from builder.facts import key_facts
    from builder.answering.rewrite import rewrites

    rng = random.Random(1)
    asked = [(e, rng.choice(rewrites(e.question))) for e in knowledge.entries]
    knowledge.prime([q for _, q in asked] + off_topic_questions())

    def passes(question, exclude=frozenset()):
        query = knowledge.query(question)  # the run's gate, learned or rules
        return knowledge.relevant(query, knowledge.search(query, k, exclude=exclude))

    passed = [passes(q) for _, q in asked]
    off = [passes(q) for q in off_topic_questions()]
    facts = [key_facts(e.answer) for e in knowledge.entries]
    near = []
    for entry, question in asked:
        same = {e.id for e in knowledge.entries
                if e.answer == entry.answer or facts[entry.id] & facts[e.id]}
        near.append(passes(question, same | {entry.id}))
    share = lambda xs, want: round(sum(x == want for x in xs) / max(len(xs), 1), 4)  # noqa: E731
    return {"rewrites_passed": share(passed, True), "off_topic_declined": share(off, False),
            "near_misses_declined": share(near, False)}


def idf_table(term_sets: list[set[str]]) -> dict[str, float]:
    """BM25's IDF of every term over the entries (always positive)."""
    df: dict[str, int] = {}
    for terms in term_sets:
        for term in terms:
            df[term] = df.get(term, 0) + 1
    n = len(term_sets)
    return {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}

