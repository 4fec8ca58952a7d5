"""The shop's knowledge: every FAQ entry of a run and a hybrid Korean index over them.

    builder index RUN_DIR FAQ_FILE        # replace a run's knowledge from an updated FAQ file

    from builder.answering.knowledge import Knowledge
    kb = Knowledge.load("runs/demo/knowledge")
    query = kb.query("배송비 얼마에요?")          # analysed once (builder.answering.text)
    hits = kb.search(query, k=3)                  # [Hit(entry, score, ...)], best first
    kb.relevant(query, hits)                      # the decline gate (builder.answering.gate)

Retrieval is hybrid: BM25 (bm25s) over Kiwi content morphemes of each entry's question, context
and answer, plus dense embeddings (builder.answering.embedder), fused by reciprocal rank fusion;
among the best five, an entry stating the kind of fact the question asks for (an hour for "몇
시", a price for "가격", a phone number for "전화번호") goes first. The folder `knowledge/`
holds `entries.jsonl`, `bm25/`, `dense.npy` and `index.json` (settings, the calibrated gate, a
hash of the entries); it is written complete or not at all. Methods take a question as text or
as a `Query`.
"""

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from builder.answering import gate
from builder.answering.embedder import DEFAULT_EMBEDDER, embedder
from builder.answering.synonyms import Lexicon
from builder.answering.text import Query, analyse, content_morphemes, content_nouns, squeeze
from builder.errors import UserError
from builder.run import Run, staging_dir

RRF_K = 60  # reciprocal rank fusion constant (Cormack et al.): 1 / (60 + rank)
RERANK = 5  # how many of the best fused entries the asked-for fact may reorder


@dataclass(frozen=True)
class Entry:
    id: int  # position in the knowledge
    line: int | None  # the row's line in the FAQ file it came from (header = line 1)
    question: str
    context: str  # the row's `input` (a situation the answer depends on); often empty
    answer: str

    @property
    def text(self) -> str:
        return " ".join(x for x in (self.question, self.context, self.answer) if x)


@dataclass(frozen=True)
class Hit:
    entry: Entry
    score: float  # fused RRF score
    bm25: float
    dense: float  # cosine similarity of question and entry


class Knowledge:
    """FAQ entries with a BM25 and a dense index: search, exact, the gate, save, load."""

    def __init__(self, entries: list[Entry], bm25, dense, settings: dict,
                 lexicon: Lexicon | None = None):
        self.entries, self.bm25 = entries, bm25
        self.lexicon = lexicon or Lexicon([])  # customers' words (builder.answering.synonyms)
        self.dense = dense  # (n_entries, dim) float32, normalised
        self.settings = settings  # embedder, gate calibration, source, sha256
        self._vectors: dict = {}  # question -> its query embedding (see `prime`)
        self._exact, self._idf = None, None  # see `exact` and `idf`, made when first asked
        self._per_entry: dict[str, list] = {}  # nouns, terms, units of each entry (computed once)

    # Build, save, load

    @classmethod
    def build(cls, entries: list[Entry], *, embedder_name: str = DEFAULT_EMBEDDER,
              source: str = "", calibrate: bool = True,
              coverage_floor: float = gate.COVERAGE_FLOOR, lexicon: Lexicon | None = None,
              learned_gate: bool = False, reuse: "Knowledge | None" = None) -> "Knowledge":
        """`reuse`: a knowledge these entries extend (an owner's answer added a row): its
        embeddings of unchanged entries are kept and, without `calibrate`, its gate."""
        import bm25s

        if not entries:
            raise UserError("the knowledge needs at least one FAQ entry")
        started = time.perf_counter()
        lexicon = lexicon or Lexicon([])
        bm25 = bm25s.BM25()
        # the question counts twice: customers word their question like the FAQ's question more
        # than like its answer (on the sample question set: hit@1 33 -> 36 of 40, hit@3 39 -> 40)
        bm25.index([lexicon.expand(content_morphemes(f"{e.question} {e.text}")) or [""]
                    for e in entries], show_progress=False)
        dense = _embeddings(entries, embedder_name, reuse)
        settings = {"embedder": embedder_name, "entries": len(entries), "source": source,
                    "entries_sha256": entries_sha256(entries),
                    "synonyms": {"groups": len(lexicon.groups), "sha256": lexicon.sha256},
                    "gate": {"dense_threshold": None, "coverage_floor": coverage_floor}}
        knowledge = cls(entries, bm25, dense, settings, lexicon)
        if calibrate:
            settings["gate"] = {**gate.calibrate(knowledge), "coverage_floor": coverage_floor}
            if learned_gate:
                from builder.answering.learned_gate import train_gate

                settings["gate"]["learned"] = train_gate(knowledge)
            settings["gate"]["measured"] = gate.gate_figures(knowledge)
        elif reuse is not None and reuse.settings.get("gate"):
            # a row or two move the calibrated threshold little; calibrating costs ~7 s (185
            # entries, 2 cores): the next `builder index` or training calibrates again
            kept = reuse.settings["gate"]
            settings["gate"] = {**kept, "coverage_floor": coverage_floor, "calibrated_entries":
                                kept.get("calibrated_entries", reuse.settings.get("entries"))}
        settings["build_s"] = round(time.perf_counter() - started, 2)
        return knowledge

    def save(self, folder: str | Path) -> Path:
        """Write folder/ (entries.jsonl, bm25/, dense.npy, index.json), complete or not at all."""
        import numpy as np

        from builder.data.prepare import replace_dir

        folder = Path(folder)
        staging = staging_dir(folder.parent, ".knowledge-")  # and a killed save's go
        try:
            with (staging / "entries.jsonl").open("w", encoding="utf-8") as f:
                for e in self.entries:
                    f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
            self.bm25.save(str(staging / "bm25"), show_progress=False)
            np.save(staging / "dense.npy", self.dense)
            (staging / "synonyms.json").write_text(
                json.dumps(self.lexicon.to_json(), ensure_ascii=False), encoding="utf-8")
            self.settings["version"] = staging.name  # new each save: see `load_whole`
            (staging / "index.json").write_text(json.dumps(self.settings, ensure_ascii=False,
                                                           indent=2), encoding="utf-8")
            staging.chmod(0o755)
            replace_dir(staging, folder)  # (and a knowledge.old a save killed mid-swap left goes)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Knowledge":
        """The knowledge saved in `folder`, read from one version of it (see `load_whole`)."""
        return load_whole(Path(folder))

    # Questions

    def prime(self, questions: list[str]) -> None:
        """Embed many questions in one batch (building training rows asks hundreds)."""
        todo = sorted(set(questions) - set(self._vectors))
        if todo:
            self._vectors.update(zip(todo, embedder(self.settings["embedder"]).query(todo)))

    def query(self, question: "str | Query") -> Query:
        """The question analysed once (lexicon words added: Lexicon.apply) and embedded."""
        query = question if isinstance(question, Query) else analyse(question)
        self.lexicon.apply(query)
        if query.vector is None:
            query.vector = self._vectors.get(query.text)
            if query.vector is None:
                query.vector = embedder(self.settings["embedder"]).query([query.text])[0]
        return query

    # Search

    def scores(self, question: "str | Query"):
        """(bm25 scores, dense cosines) of every entry for one question."""
        import numpy as np

        query = self.query(question)
        terms = [t for t in query.morphemes if t in self.bm25.vocab_dict]
        bm25 = (self.bm25.get_scores(terms) if terms
                else np.zeros(len(self.entries), dtype=np.float32))
        return bm25, self.dense @ query.vector

    def search(self, question: "str | Query", k: int = 3,
               exclude: set[int] = frozenset()) -> list[Hit]:
        """The k entries that best answer the question: BM25 and dense ranks fused by RRF; among
        the best RERANK, those stating the kind of fact the question asks for go first."""
        import numpy as np

        query = self.query(question)
        bm25, dense = self.scores(query)
        fused = np.zeros(len(self.entries))
        for scores in (bm25, dense):
            order = np.argsort(-scores, kind="stable")
            ranks = np.empty(len(order), dtype=int)
            ranks[order] = np.arange(1, len(order) + 1)
            # an entry sharing no term gets no BM25 vote at all
            votes = 1.0 / (RRF_K + ranks)
            fused += np.where(scores > 0, votes, 0.0) if scores is bm25 else votes
        best = [i for i in np.argsort(-fused, kind="stable") if int(i) not in exclude]
        if wanted := query.units:  # stating the asked-for fact goes first
            top = best[:RERANK]
            best = sorted(top, key=lambda i: not wanted & self.units(int(i))) + best[RERANK:]
        return [Hit(self.entries[i], float(fused[i]), float(bm25[i]), float(dense[i]))
                for i in best[:k]]

    def exact(self, question: str, context: str = "") -> Hit | None:
        """The entry whose question (and context) is `question` word for word, ignoring spaces,
        punctuation and letter case; None otherwise. Its own answer is the right one."""
        if self._exact is None:  # the first of repeated questions wins, as in the FAQ file
            self._exact = {k: e for e in reversed(self.entries)
                           for k in [(squeeze(e.question), squeeze(e.context))]}
        entry = self._exact.get((squeeze(question), squeeze(context)))
        return None if entry is None else Hit(entry, 1.0, 0.0, 1.0)

    # What each entry holds, computed once

    def _each(self, name: str, entry_id: int, make):
        if name not in self._per_entry:
            self._per_entry[name] = [make(e) for e in self.entries]
        values = self._per_entry[name]
        return values[entry_id] if 0 <= entry_id < len(values) else set()

    def units(self, entry_id: int) -> set[str]:
        """The units of the facts entry `entry_id` states (its answer and context)."""
        from builder.facts import facts

        return self._each("units", entry_id,
                          lambda e: {unit for _, unit in facts(f"{e.context} {e.answer}")})

    def entry_nouns(self, entry: Entry) -> set[str]:
        if not 0 <= entry.id < len(self.entries):
            return content_nouns(entry.text)
        words = self.lexicon.canons  # the lexicon's words for the entry's are its nouns too
        return self._each("nouns", entry.id, lambda e: content_nouns(e.text) | set(
            words(content_morphemes(e.text))))

    def entry_terms(self, entry: Entry) -> set[str]:
        expand = self.lexicon.expand
        return self._each("terms", entry.id, lambda e: set(expand(content_morphemes(e.text))))

    def idf(self) -> dict[str, float]:
        if self._idf is None:
            self._idf = gate.idf_table([self.entry_terms(e) for e in self.entries])
        return self._idf

    # The gate (builder.answering.gate), on this knowledge

    def relevant(self, question: "str | Query", hits: list[Hit]) -> bool:
        """The decline gate: the learned one when the run trained it, else the rules."""
        from builder.answering.learned_gate import gate_for

        return gate_for(self)(self, self.query(question), hits)

    def coverage(self, question: "str | Query", entry: Entry) -> float:
        return gate.coverage(self, self.query(question), entry)

    def fitting(self, question: "str | Query", hits: list[Hit]) -> list[Hit]:
        return gate.fitting(self, self.query(question), hits)


def knowledge_for(entries: list[Entry], rag, *, source: str = "", run_dir=None,
                  calibrate: bool = True, reuse: Knowledge | None = None) -> Knowledge:
    """Built with a run's retrieval settings (builder.config.RagConfig): its embedder,
    coverage floor, lexicon (the shipped one and RUN/synonyms.txt) and gate (`reuse`: see
    Knowledge.build)."""
    from builder.answering.synonyms import RUN_FILE, SHIPPED

    lexicon = None
    if getattr(rag, "synonyms", True):
        lexicon = Lexicon.from_files(Path(run_dir) / RUN_FILE if run_dir else None, SHIPPED)
    return Knowledge.build(entries, embedder_name=rag.embedder, source=source, calibrate=calibrate,
                           coverage_floor=rag.coverage_floor, lexicon=lexicon,
                           learned_gate=getattr(rag, "gate", "rules") == "learned", reuse=reuse)


def _embeddings(entries: list[Entry], embedder_name: str, reuse: Knowledge | None):
    """Passage embeddings of the entries; those `reuse` already holds (same text, same
    embedder) are copied: embedding 185 entries takes ~13 s on 2 busy cores, one ~0.02 s."""
    import numpy as np

    known = {}
    if reuse is not None and reuse.settings.get("embedder") == embedder_name:
        known = {e.text: row for e, row in zip(reuse.entries, reuse.dense)}
    todo = [e.text for e in entries if e.text not in known]
    if todo:
        known.update(zip(todo, embedder(embedder_name).passage(todo)))
    return np.stack([known[e.text] for e in entries]).astype(np.float32)


def load_whole(folder: Path, wait_s: float = 5.0) -> Knowledge:
    """Read one version of the knowledge in `folder`: a save that swaps a new version in
    meanwhile makes it read again (for up to `wait_s` seconds), and a save killed between its
    two renames (folder gone, folder.old there) leaves the old version readable. The version
    in index.json is the same after the read as before it, and no version comes back once
    replaced, so every file read belongs to it."""
    deadline = time.monotonic() + wait_s
    while True:
        where = readable(folder)
        try:
            before = _version(where)
            knowledge = _read(where)
            if knowledge.settings.get("version", before) == before == _version(where):
                return knowledge
        except OSError:  # mid-swap: the old version's files going, or the folder renamed
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise UserError(f"{folder} was replaced again and again while being read; "
                            "load it again when the updates are done")
        time.sleep(0.02)


def _version(folder: Path):
    """The id the save of `folder` wrote into index.json (a folder saved without one: its
    inode, which a later save may reuse)."""
    settings = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    return settings.get("version") or folder.stat().st_ino


def _read(folder: Path) -> Knowledge:
    import bm25s
    import numpy as np

    settings = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    with (folder / "entries.jsonl").open(encoding="utf-8") as f:
        entries = [Entry(**json.loads(line)) for line in f if line.strip()]
    bm25 = bm25s.BM25.load(str(folder / "bm25"), show_progress=False)
    dense = np.load(folder / "dense.npy")
    groups = folder / "synonyms.json"  # the lexicon the index was built with
    lexicon = Lexicon.from_json(json.loads(groups.read_text(encoding="utf-8"))
                                if groups.is_file() else [])
    embedder(settings["embedder"])  # load the model now, not on the first question
    return Knowledge(entries, bm25, dense, settings, lexicon)


def readable(folder: Path) -> Path:
    """`folder`, or the folder.old a save killed between its two renames left (replace_dir:
    folder -> folder.old, then the new one -> folder); a UserError when neither holds one."""
    if (folder / "index.json").is_file():
        return folder
    old = folder.with_name(folder.name + ".old")
    if (old / "index.json").is_file():
        return old
    raise UserError(f"{folder}: no knowledge index there; {Run(folder.parent).make('index')}")


def entries_sha256(entries: list[Entry]) -> str:
    digest = hashlib.sha256()
    for e in entries:
        digest.update(json.dumps([e.question, e.context, e.answer], ensure_ascii=False).encode())
    return digest.hexdigest()
