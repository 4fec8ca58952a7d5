"""Related FAQ questions: what a channel offers as buttons under an answer ("이런 질문은
어떠세요?"), so a customer finds the next answer without typing.

    related_questions(bot.knowledge, "배송비 얼마예요?", reply)   # ['제주도도 무료배송 되나요?', ...]

The entries the knowledge ranks next for the question, leaving out those the answer came
from and questions asked alike; after a decline, the nearest entries, which is where a
customer who asked in other words most often finds the answer.
"""

from builder.answering.text import squeeze


FLOOR_BELOW_GATE = 0.02  # a little under the gate's threshold: near, not necessarily answerable
DEFAULT_FLOOR = 0.86  # a knowledge without a calibrated gate (e5 puts unrelated pairs at ~0.83)


def related_questions(knowledge, question: str, reply=None, n: int = 3) -> list[str]:
    """Up to `n` FAQ questions near `question`, not the ones `reply` answered from. Near: e5
    cosine within FLOOR_BELOW_GATE of the gate's calibrated threshold, so an off-topic
    question ("주식 추천해 주세요") gets none."""
    if knowledge is None or not knowledge.entries or n <= 0:
        return []
    threshold = (knowledge.settings.get("gate") or {}).get("dense_threshold")
    dense_floor = threshold - FLOOR_BELOW_GATE if threshold else DEFAULT_FLOOR
    used = {hit.entry.id for hit in (reply.sources if reply is not None else [])}
    seen = {squeeze(question)} | {squeeze(knowledge.entries[i].question) for i in used
                                  if 0 <= i < len(knowledge.entries)}
    out = []
    for hit in knowledge.search(question, k=n + len(used) + 3, exclude=used):
        key = squeeze(hit.entry.question)
        if hit.dense < dense_floor or key in seen:
            continue
        seen.add(key)
        out.append(hit.entry.question)
        if len(out) == n:
            break
    return out
