"""The base model's eval answers, kept between evals: the same base model, template, knowledge,
questions, settings and answering code give the same answers, so they are read back instead of
generated again ($BUILDER_CACHE/eval-base/KEY.json)."""

import hashlib
import json
from pathlib import Path

# the modules whose code decides the answers: cached base answers are keyed by them
PACKAGE = Path(__file__).resolve().parents[1]
ANSWERING_CODE = ("facts.py", "numerals.py", "answering/guard.py", "answering/chatbot.py",
                  "answering/knowledge.py", "answering/gate.py", "answering/grounding.py", "answering/text.py",
                  "answering/embedder.py", "answering/decoding.py",
                  "answering/engines/transformers.py", "answering/synonyms.py",
                  "answering/learned_gate.py")


def cache_key(meta: dict, bot, items, max_new_tokens: int) -> str:
    from builder.training.sft import library_versions

    knowledge = None  # what answers depend on: the entries, the embedder and the gate
    if bot.knowledge is not None:
        settings = bot.knowledge.settings
        knowledge = [settings.get(k) for k in ("entries_sha256", "embedder", "gate", "synonyms")]
    rag = vars(bot.rag) if bot.rag is not None else None
    # the replies are kept as the guard left them: a changed guard gives other replies
    rules = [hashlib.sha256((PACKAGE / name).read_bytes()).hexdigest()
             for name in ANSWERING_CODE]
    blob = json.dumps([meta.get("base_model_path"), bot.template.sha256, knowledge, rag, items,
                       max_new_tokens, sorted(bot.engine.end_ids), library_versions(), rules],
                      ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached_replies(path: Path, knowledge):
    from builder.answering.guard import Reply

    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    by_id = {e.id: e for e in knowledge.entries} if knowledge is not None else {}
    replies = []
    for record in records:
        ids = record.pop("source_ids")
        reply = Reply(**record)
        reply.invented = [tuple(f) for f in reply.invented]
        reply.sources = [_SourceHit(by_id[i]) for i in ids if i in by_id]
        replies.append(reply)
    return replies


class _SourceHit:
    """A cached reply's source: just the entry (scores are not kept)."""

    def __init__(self, entry):
        self.entry, self.score, self.bm25, self.dense = entry, 0.0, 0.0, 0.0


def save_replies(path: Path, replies) -> None:
    records = [{"text": r.text, "declined": r.declined, "gated": r.gated, "exact": r.exact,
                "guarded": r.guarded,
                "fallback": r.fallback, "runaway": r.runaway,
                "invented": [list(f) for f in r.invented], "generated": r.generated,
                "source_ids": [h.entry.id for h in r.sources]} for r in replies]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    tmp.rename(path)
