"""The learned decline gate: a logistic regression over retrieval features, trained per run on
the shop's own FAQ, so it learns what an answerable question looks like *for this FAQ*.

    from builder.answering.learned_gate import train_gate, probability
    settings["gate"]["learned"] = train_gate(knowledge)   # stored in index.json (numbers only)
    probability(knowledge, query, hits) >= threshold       # answer; below: decline

Training questions, all made from the FAQ itself:
- should pass: rule rewrites of every entry's question (builder.answering.rewrite) and lexicon
  rewordings (a FAQ word swapped for a customer's word, builder.answering.synonyms);
- should be declined: leave-one-out near misses (the question asked with its own entry and
  every entry sharing a key fact left out, against the best remaining entries) and the shipped
  off-topic list (prompts/off_topic_ko.txt).
The threshold is set on held-out entries (5 folds by entry): the lowest probability that keeps
`RECALL` of the held-out rewrites answered. The model is stored as plain numbers (means,
scales, weights), never as a pickle.
"""

import math
import random

RECALL = 0.95  # share of held-out rewrites of the FAQ's own questions the threshold answers
FOLDS = 5
FEATURES = ("dense", "dense_margin", "bm25", "bm25_margin", "coverage", "best_coverage",
            "noun_share", "shares_noun", "unknown_share", "missing_idf", "unit_match", "terms")


def features(knowledge, query, hits) -> list[float]:
    """The retrieval features of a question against its hits (best first)."""
    from builder.answering.gate import GENERIC_NOUNS, LIGHT_WORDS, coverage

    if not hits:
        return [0.0] * len(FEATURES)
    top = hits[0]
    second = hits[1] if len(hits) > 1 else None
    idf = knowledge.idf()
    words = [t for t in dict.fromkeys(query.morphemes)
             if t not in LIGHT_WORDS and t not in GENERIC_NOUNS]
    known = [t for t in words if t in idf]
    found = knowledge.entry_terms(top.entry)
    missing = [idf[t] for t in known if t not in found]
    top_idf = max(idf.values()) if idf else 1.0
    nouns = query.nouns
    shared = nouns & knowledge.entry_nouns(top.entry)
    if query.units:
        unit_match = 1.0 if query.units & knowledge.units(top.entry.id) else -1.0
    else:
        unit_match = 0.0
    covered = [coverage(knowledge, query, h.entry) for h in hits]
    return [
        top.dense,
        top.dense - (second.dense if second else 0.0),
        math.log1p(top.bm25),
        math.log1p(top.bm25) - (math.log1p(second.bm25) if second else 0.0),
        covered[0],
        max(covered),
        len(shared) / len(nouns) if nouns else 0.0,
        1.0 if any(nouns & knowledge.entry_nouns(h.entry) for h in hits) else 0.0,
        (len(words) - len(known)) / len(words) if words else 0.0,
        max(missing, default=0.0) / top_idf,
        unit_match,
        math.log1p(len(words)),
    ]


def probability(knowledge, query, hits) -> float:
    """P(the FAQ answers this question) under the run's learned gate."""
    return _prob(knowledge.settings["gate"]["learned"], features(knowledge, query, hits))


def passes(knowledge, query, hits) -> bool:
    """The learned gate's verdict: answer (True) or decline."""
    return bool(hits) and (probability(knowledge, query, hits)
                           >= knowledge.settings["gate"]["learned"]["threshold"])


def gate_for(knowledge):
    """The knowledge's gate function: `passes` when the run trained one, else the rules."""
    from builder.answering.gate import relevant

    return passes if knowledge.settings.get("gate", {}).get("learned") else relevant


def training_questions(knowledge, seed: int = 0) -> list[tuple[list[float], int, int]]:
    """(features, label, entry id or -1) of every training question (see the module doc)."""
    from builder.answering.gate import off_topic_questions
    from builder.answering.rewrite import rewrites
    from builder.facts import key_facts

    rng = random.Random(seed)
    k = max(3, knowledge.settings.get("k", 3))
    asked = []  # (entry, question, should pass)
    for entry in knowledge.entries:
        options = rewrites(entry.question)
        for question in rng.sample(options, min(2, len(options))):
            asked.append((entry, question, 1))
        for question in knowledge.lexicon.variants(entry.question, limit=1):
            asked.append((entry, question, 1))
        asked.append((entry, rng.choice(options), 0))  # its near miss
    off_topic = off_topic_questions()
    knowledge.prime([q for _, q, _ in asked] + off_topic)
    facts = [key_facts(e.answer) for e in knowledge.entries]
    out = []
    for entry, question, label in asked:
        exclude = frozenset()
        if not label:  # leave its own entry, and those stating the same facts, out
            exclude = frozenset(e.id for e in knowledge.entries
                                if e.answer == entry.answer or facts[entry.id] & facts[e.id])
            if len(exclude) >= len(knowledge.entries):
                continue
        query = knowledge.query(question)
        out.append((features(knowledge, query, knowledge.search(query, k, exclude=exclude)),
                    label, entry.id))
    for question in off_topic:
        query = knowledge.query(question)
        out.append((features(knowledge, query, knowledge.search(query, k)), 0, -1))
    return out


def _fit(xs, ys):
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(xs, dtype=float)
    means, scales = x.mean(axis=0), x.std(axis=0)
    scales[scales == 0] = 1.0
    model = LogisticRegression(class_weight="balanced", C=1.0, max_iter=1000)
    model.fit((x - means) / scales, ys)
    return {"means": means.tolist(), "scales": scales.tolist(),
            "weights": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])}


def _prob(model, x) -> float:
    z = model["intercept"] + sum(w * (v - m) / s for w, v, m, s in
                                 zip(model["weights"], x, model["means"], model["scales"]))
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def train_gate(knowledge, recall: float | None = None, seed: int = 0) -> dict:
    """Fit the gate on this FAQ; the threshold keeps `recall` of held-out rewrites answered.
    Returns the model as numbers with its held-out figures."""
    recall = recall or RECALL
    rows = training_questions(knowledge, seed)
    ids = sorted({e for _, _, e in rows if e >= 0})
    random.Random(seed).shuffle(ids)
    fold_of = {e: i % FOLDS for i, e in enumerate(ids)}
    # an entry's questions are held out together; off-topic questions by position
    folds = [fold_of[e] if e >= 0 else i % FOLDS for i, (_, _, e) in enumerate(rows)]
    held = []  # (probability, label) of each entry's questions under a model that never saw it
    for fold in range(FOLDS):
        train = [r for r, f in zip(rows, folds) if f != fold]
        test = [r for r, f in zip(rows, folds) if f == fold]
        if len({y for _, y, _ in train}) < 2 or not test:
            continue
        model = _fit([x for x, _, _ in train], [y for _, y, _ in train])
        held += [(_prob(model, x), y) for x, y, _ in test]
    positives = sorted(p for p, y in held if y == 1)
    threshold = positives[int((1 - recall) * len(positives))] if positives else 0.5
    model = _fit([x for x, _, _ in rows], [y for _, y, _ in rows])
    negatives = [p for p, y in held if y == 0]
    return {**model, "features": list(FEATURES), "threshold": round(threshold, 4),
            "recall_target": recall, "questions": len(rows),
            "held_out": {"rewrites_passed": round(sum(p >= threshold for p in positives)
                                                  / max(len(positives), 1), 4),
                         "declines_right": round(sum(p < threshold for p in negatives)
                                                 / max(len(negatives), 1), 4)}}
