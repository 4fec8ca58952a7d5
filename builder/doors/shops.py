"""The shops one `builder serve` answers for: their run folders by name, each shop's bot loaded
on its first question and dropped, least recently used first, when the loaded ones would
outgrow the memory budget.

    shops = Shops(find_runs(["runs/"]), memory_gb=8)     # every run in runs/ that can answer
    bot = shops.bot("shop_a")                              # loaded now, or the one in memory
    shops.log("shop_a")                                    # its conversation log

Each shop keeps its own knowledge, template, decline message, guard settings and log. Runs
tuned from the same base share it (builder.answering.engines.adapters.SharedBases): their
adapters are loaded into one base model, so N such shops cost one base model and N adapters
(a few MB each for the embedded model, ~170 MB for an 8B model at r=16) instead of N merged
models. Other runs (a merged model without its adapter, a GGUF) load on their own.
"""

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from builder.errors import UserError
from builder.run import Run

log = logging.getLogger(__name__)


def can_answer(folder: Path) -> bool:
    run = Run(folder)
    return run.template_path.is_file() and (run.has_model() or run.has_knowledge())


def is_hub_repo(place: str) -> bool:
    """OWNER/NAME that is not a local path (a mistyped runs/shop is not sent to the Hub)."""
    path = Path(place)
    return (place.count("/") == 1 and not path.exists() and not path.parent.exists()
            and not place.startswith((".", "/", "~")))


def find_runs(places: list[str]) -> dict[str, Path]:
    """{shop name: run folder} from run folders, folders of runs and Hub repos (OWNER/NAME,
    downloaded once: builder.deploy.hub.pull_run). A shop's name is its folder's name."""
    runs: dict[str, Path] = {}
    for place in places:
        path = Path(place)
        if path.is_dir() and can_answer(path):
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_dir() and can_answer(p))
            if not found:
                raise UserError(f"{path}: neither a run folder nor a folder of runs (no "
                                "subfolder holds a trained run or its FAQ)")
        elif is_hub_repo(place):
            from builder.deploy.hub import pull_run

            found = [pull_run(place)]
        else:
            raise UserError(f"{place}: no such run folder (nor a Hub repo OWNER/NAME)")
        for folder in found:
            name = folder.resolve().name
            if name in runs and runs[name].resolve() != folder.resolve():
                raise UserError(f"two shops are named {name!r} ({runs[name]} and {folder}): "
                                "a shop is asked for by its folder's name, rename one")
            runs[name] = folder
    return runs


def model_bytes(folder: Path) -> int:
    """What a model folder's weights take in memory here: their files' size, twice that for
    16-bit weights on CPU (upcast to fp32, as the transformers engine loads them)."""
    import json

    size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) if folder.is_dir() else 0
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return size
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    import torch

    half = dtype in ("bfloat16", "float16") and not torch.cuda.is_available()
    return 2 * size if half else size


def footprint(run: Run, use: str, shared_base: bool) -> tuple[int, str | None]:
    """(bytes a shop's model holds in memory, estimated from its files; the base folder it
    shares, or None)."""
    if use == "gguf":
        return sum(p.stat().st_size for p in run.gguf_dir.glob("*.gguf")), None
    if shared_base and run.has_adapter():
        adapter = sum(p.stat().st_size for p in run.adapter_dir.glob("adapter_model.*"))
        return adapter, str(Path(run.base_model_dir()).resolve())
    return model_bytes(run.merged_dir), None


class Shop:
    def __init__(self, name: str, run_dir: Path):
        self.name, self.run_dir = name, run_dir
        self.bot = None
        self.bytes, self.base = 0, None
        self.busy = 0  # answers in flight: never dropped while one runs
        self.following = threading.Event()  # set: its knowledge follower stops


class Shops:
    """The server's shops by name; `bot(name)` loads lazily within `memory_gb`."""

    def __init__(self, runs: dict[str, Path], *, use: str = "auto", engine: str = "local",
                 engine_model: str | None = None, settings: list[str] = (),
                 parallel: int | None = None, memory_gb: float | None = None,
                 db: str | None = None, share_base: bool = True):
        from builder.answering.engines.adapters import SharedBases

        if not runs:
            raise UserError("no shops to serve")
        self.given = list(runs)
        self.shops = OrderedDict((name, Shop(name, Path(path))) for name, path in runs.items())
        self.use, self.engine, self.engine_model = use, engine, engine_model
        self.settings, self.parallel, self.db = list(settings), parallel, db
        self.share_base = share_base and engine == "local" and use in ("auto", "adapter")
        self.budget = int((memory_gb or default_memory_gb()) * 2**30)
        self.bases = SharedBases()
        self._lock = threading.Lock()  # loading and dropping
        self._order = threading.Lock()  # the least-recently-asked order
        self._logs: dict[str, object] = {}

    def names(self) -> list[str]:
        """Every shop, in the order given."""
        return list(self.given)

    def loaded(self) -> list[str]:
        """The shops in memory, least recently asked first."""
        return [s.name for s in self._all() if s.bot is not None]

    def _all(self) -> list[Shop]:
        with self._order:
            return list(self.shops.values())

    def __contains__(self, name) -> bool:
        return name in self.shops

    def bot(self, name: str):
        """The shop's Chatbot, loaded now if it is not in memory (the least recently used
        others are dropped first when it would not fit the budget)."""
        shop = self.shops[name]
        self._asked(name)
        with self._lock:
            if shop.bot is None:
                self._load(shop)
            return shop.bot

    def in_memory_bot(self, name: str):
        """The shop's bot if it is in memory (now counted as asked), else None."""
        bot = self.shops[name].bot
        if bot is not None:
            self._asked(name)
        return bot

    def _asked(self, name: str) -> None:
        with self._order:
            self.shops.move_to_end(name)

    def log(self, name: str):
        from builder.owner.log import ConversationLog

        with self._lock:
            if name not in self._logs:
                self._logs[name] = ConversationLog.for_run(self.shops[name].run_dir, self.db)
            return self._logs[name]

    def enter(self, name: str) -> None:
        self.shops[name].busy += 1

    def leave(self, name: str) -> None:
        self.shops[name].busy -= 1

    def in_memory(self) -> int:
        """Estimated bytes of the loaded shops' models (a shared base counted once)."""
        loaded = [s for s in self._all() if s.bot is not None]
        bases = {s.base: self._base_bytes(s) for s in loaded if s.base is not None}
        return sum(s.bytes for s in loaded) + sum(bases.values())

    # Loading and dropping (under the lock)

    def _load(self, shop: Shop) -> None:
        run = Run(shop.run_dir)
        shared = self.share_base and run.has_adapter()
        shop.bytes, shop.base = footprint(run, self.use, shared)
        new_base = shop.base is not None and shop.base not in self.bases.bases
        need = shop.bytes + (self._base_bytes(shop) if new_base else 0)
        for other in [s for s in self._all() if s.bot is not None and s is not shop]:
            if self.in_memory() + need <= self.budget:
                break
            if other.busy == 0:
                self._drop(other)
        started = time.perf_counter()
        try:
            shop.bot = self._chatbot(shop, run, shared)
        except BaseException:
            if shared:
                self.bases.release(shop.name)
            raise
        from builder.owner.live import follow, follow_model

        shop.following = threading.Event()
        if shop.bot.knowledge is not None:
            follow(shop.bot, shop.run_dir, stop=shop.following)
        if not shop.bot.trained:  # still training: its model is put in when it is there
            follow_model(shop.bot, shop.run_dir, self.use, stop=shop.following,
                         parallel=self.parallel)
        log.info("shop %s loaded in %.1f s (%s; %.0f MB of models in memory)", shop.name,
                 time.perf_counter() - started, "shared base + adapter" if shared else self.use,
                 self.in_memory() / 2**20)

    def _chatbot(self, shop: Shop, run: Run, shared: bool):
        from builder.answering.chatbot import Chatbot, load_chatbot
        from builder.answering.engines.loading import serving_rag, shared_answers
        from builder.answering.knowledge import Knowledge

        if not shared:  # (an engine URL: the shop's own model there, a LoRA module of a
            # vLLM server started with --lora-modules NAME=..., unless --engine-model says)
            model = self.engine_model or (shop.name if self.engine != "local" else None)
            return load_chatbot(run.path, self.use, engine=self.engine, engine_model=model,
                                faq_first=True, settings=self.settings, parallel=self.parallel)
        template, rag = run.template(), serving_rag(run, self.settings)
        knowledge = (Knowledge.load(run.require_knowledge().knowledge_dir)
                     if template.grounded else None)
        engine = shared_answers(self.bases.engine(run, shop.name, rag), rag)
        return Chatbot(engine, template, knowledge=knowledge, rag=rag)

    def _drop(self, shop: Shop) -> None:
        shop.following.set()
        shop.bot = None
        if shop.base is not None:
            self.bases.release(shop.name)
        log.info("shop %s dropped from memory (least recently asked)", shop.name)

    def _base_bytes(self, shop: Shop) -> int:
        return model_bytes(Path(shop.base))


def default_memory_gb() -> float:
    """Half of this machine's memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 / 2
    except (ValueError, OSError, AttributeError):
        return 8.0
