"""Live knowledge: an FAQ row the owner adds reaches a running bot in seconds, without training.

    from builder.owner.live import knowledge_lock, add_rows, follow
    with knowledge_lock("runs/demo"):                 # one writer per run at a time
        knowledge, done = add_rows("runs/demo", [("강아지 간식 팔아요?", "", "네, 5,000원...")])
    follow(bot, "runs/demo")                          # in the server: swap in each new version

Writing: the run's current entries plus the rows are indexed with the run's retrieval settings
(builder.answering.knowledge.knowledge_for) and saved over RUN/knowledge (and the merged
model's copy): a staging folder renamed into place, so a reader sees the old version or the new
one. Embeddings of unchanged entries and the calibrated gate are reused: on the sample FAQ (184
rows, 2 busy cores) a full rebuild takes ~19 s, this ~0.5 s once Kiwi is loaded.

Reading: `follow` polls RUN/knowledge/index.json (its inode, time and size change with every
save) and assigns `bot.knowledge` once the new version is read whole; answers in flight keep
the object they started with.

A bot that answers from the FAQ alone while its run trains (`load_chatbot(RUN,
faq_first=True)`) gets its model from `follow_model`: once the run folder holds it (the adapter
when training ends, merged/ when the merge has renamed it into place), it is loaded beside the
answering and put in with one assignment; with use "auto" the merged model replaces the
adapter when it comes.
"""

import logging
import threading
import time
from pathlib import Path

from builder.answering.indexing import with_rows
from builder.errors import UserError
from builder.run import Run, knowledge_lock  # noqa: F401 (the lock lives with the run folder)

log = logging.getLogger(__name__)



def add_rows(run_dir: str | Path, rows: list[tuple[str, str, str]]):
    """RUN/knowledge rebuilt from its current entries plus `rows` and swapped in (the caller
    holds `knowledge_lock`). Returns (knowledge, {"entries", "seconds", "rows"})."""
    from builder.answering.knowledge import Knowledge, knowledge_for

    run = Run(run_dir).require()
    started = time.perf_counter()
    current = Knowledge.load(run.knowledge_dir)
    entries, done = with_rows(current.entries, rows)
    if entries == current.entries:
        return current, {"entries": len(entries), "seconds": 0.0, "rows": done}
    source = current.settings.get("source", "")
    if "inbox/faq.csv" not in source:
        source = f"{source} + inbox/faq.csv" if source else "inbox/faq.csv"
    knowledge = knowledge_for(entries, run.config().rag, source=source, run_dir=run.path,
                              calibrate=False, reuse=current)
    knowledge.save(run.knowledge_dir)
    if run.has_merged():  # the merged model carries a copy (as `builder index` keeps it)
        knowledge.save(run.merged_dir / "knowledge")
    seconds = round(time.perf_counter() - started, 2)
    return knowledge, {"entries": len(entries), "seconds": seconds, "rows": done}


# ---------------------------------------------------------------------------------------------
# Reading: a running bot follows the run's knowledge


def version(folder: Path):
    """What changes with every save of the knowledge in `folder`; None while it is mid-swap."""
    try:
        stat = (folder / "index.json").stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def warmed(bot, knowledge) -> None:
    """Compute what the first answer from `knowledge` would wait for (its per-entry words, the
    word-for-word table), before customers reach it."""
    from builder.answering.grounding import Grounder

    if knowledge.entries:
        question = knowledge.entries[0].question
        knowledge.exact(question)
        Grounder(knowledge, bot.rag, bot.template).ground(question, exact=False)


def follow(bot, run_dir: str | Path, interval_s: float = 1.0,
           stop: threading.Event | None = None) -> threading.Thread:
    """A daemon thread that sets `bot.knowledge` to each new version of RUN/knowledge, checking
    every `interval_s` seconds until `stop` is set. A version it cannot read yet (mid-swap)
    keeps the bot on the one it has, with a warning, and is tried again next time."""
    from builder.answering.knowledge import Knowledge

    folder = Run(run_dir).knowledge_dir
    stop = stop or threading.Event()
    seen = version(folder)  # the bot was loaded from this one
    failed = None  # the version last found unreadable: warned about once, tried every tick

    def loop():
        nonlocal seen, failed
        while not stop.wait(interval_s):
            now = version(folder)
            if now is None or now == seen:
                continue
            try:
                knowledge = Knowledge.load(folder)
                warmed(bot, knowledge)
            except Exception as err:  # noqa: BLE001 (never into the server: next tick)
                if failed != now:
                    log.warning("%s: new knowledge not read yet (%s: %s); answering from the "
                                "previous one", folder, type(err).__name__, err)
                failed = now
                continue
            bot.knowledge = knowledge  # one assignment: answers in flight keep the old one
            seen = now
            log.info("%s: %d FAQ entries now answered from", folder, len(knowledge.entries))

    thread = threading.Thread(target=loop, name=f"follow {folder}", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------------------------
# A bot answering from the FAQ while its run trains: the model is put in when it is there


def weights_version(run: Run, use: str):
    """What the model `use` picks is, on disk: (its folder, the time of the file that is
    written last), or None while the run has none."""
    try:
        if use == "gguf":
            folder, marker = run.gguf(), run.gguf_dir / "report.json"
        else:
            model_dir, adapter_dir = run.weights(use)
            folder = adapter_dir or model_dir
            marker = folder / ("adapter_config.json" if adapter_dir else "config.json")
        return str(folder), marker.stat().st_mtime_ns
    except (OSError, UserError):
        return None


def follow_model(bot, run_dir: str | Path, use: str = "auto", interval_s: float = 2.0,
                 stop: threading.Event | None = None, on_change=None,
                 **engine_options) -> threading.Thread:
    """A daemon thread that sets `bot.engine` to the run's model once it is there, checking
    every `interval_s` seconds; with use "auto" it keeps watching until merged/ is the one put
    in. `on_change(bot)` runs after each change (the server makes the model's first step);
    `engine_options` go to load_engine (parallel), the bot's rag settings with them.
    A model that fails to load is warned about once and tried again when its files change."""
    from builder.answering.engines.loading import load_engine

    run = Run(run_dir)
    stop = stop or threading.Event()

    def loop():
        loaded = failed = None
        while not stop.wait(interval_s):
            now = weights_version(run, use)
            if now is None or now in (loaded, failed):
                continue
            try:
                engine = load_engine(run, use, rag=bot.rag, **engine_options)
            except Exception as err:  # noqa: BLE001 (never into the server: the FAQ answers)
                log.warning("%s: the trained model did not load (%s: %s); answering from the "
                            "FAQ until it does", run.path, type(err).__name__, err)
                failed = now
                continue
            bot.engine, loaded = engine, now  # one assignment: answers in flight keep theirs
            log.info("%s: the trained model answers from now on (%s)", run.path, now[0])
            if on_change is not None:
                on_change(bot)
            if use != "auto" or run.has_merged():
                return

    thread = threading.Thread(target=loop, name=f"follow model {run.path}", daemon=True)
    thread.start()
    return thread
