"""The run folder in code: the contract between the stages, read and written in one place.

    from builder.run import Run
    run = Run("runs/demo")
    run.meta(), run.config(), run.template()   # meta.json, config.yaml, template.yaml
    run.weights("auto")                         # (merged/, None) or (base model folder, adapter/)
    run.require_model()                         # a UserError that says which command makes it

What a run folder holds, and which stage writes it:

    RUN/config.yaml     the resolved config                      builder train (prefer, merge-models)
    RUN/template.yaml   the prompt template, as trained           builder train
    RUN/meta.json       base model, data, seed, versions, ...     builder train
    RUN/adapter/        the LoRA adapter and its tokenizer         builder train
    RUN/knowledge/      the FAQ index the bot answers from         builder train, builder index
    RUN/merged/         the 16-bit model (with a knowledge/ copy)  builder merge
    RUN/gguf/           GGUF files, report.json, Modelfile         builder export
    RUN/eval/           report.json, answers.csv, report.md        builder eval
    RUN/conversations.db  every answer, feedback, the inbox       every door (builder.owner.log)

Every "make it with `builder X`" message comes from here, worded once.
"""

import fcntl
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from builder.errors import UserError

USES = ("auto", "merged", "adapter", "gguf")


def write_atomic(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Write `data` (text as UTF-8, or bytes) to `path` whole or not at all: a temporary file
    beside it, then a rename; `mode` for files others read (a chart the page serves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Staging folders: a stage writes PARENT/.PREFIX<PID>.<start>-xxxx, then renames it into place


def staging_dir(parent: Path, prefix: str) -> Path:
    """A new empty folder in `parent` for a stage to write into before renaming it into place.
    Its name holds this process's PID and start time, so that the ones a killed stage left
    (a merged model is GBs) are told from ones still being written: those are removed first."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent, prefix)
    pid = os.getpid()
    start = process_start(pid)
    owner = f"{pid}.{start}" if start else str(pid)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{owner}-", dir=parent))


def remove_stale_staging(parent: Path, prefix: str) -> list[Path]:
    """Remove parent/PREFIX* left by a stage that no longer runs: the process its name holds
    has exited (or is another one under a PID used again), or it names none (an older
    builder's). Ones a live process is writing stay. Returns what was removed."""
    removed = []
    for path in sorted(parent.glob(f"{prefix}*")) if parent.is_dir() else []:
        rest = path.name[len(prefix):]
        owner = rest.split("-", 1)[0] if "-" in rest else ""  # "PID.START" before the random part
        pid, _, start = owner.partition(".")
        if pid.isdigit() and (not start or start.isdigit()) and _running(int(pid), start):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _running(pid: int, start: str) -> bool:
    """Whether process `pid`, started at `start` (clock ticks since boot; "" unknown), runs."""
    if os.name != "posix":
        return True  # no harmless probe there: keep the folder
    try:
        os.kill(pid, 0)  # signal 0: does the process exist?
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return not start or process_start(pid) in (None, start)


def process_start(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (Linux /proc); None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command name


# ---------------------------------------------------------------------------------------------
# A LoRA adapter folder, whole or not


def adapter_problem(adapter_dir: Path) -> str | None:
    """What makes adapter_dir unusable (its config or weights missing, empty or cut short), or
    None when it is whole."""
    config = adapter_dir / "adapter_config.json"
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            return f"{config} is not an adapter config"
    except FileNotFoundError:
        return f"{config} is missing"
    except (OSError, ValueError):
        return f"{config} is empty or cut short"
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        return safetensors_problem(weights)
    legacy = adapter_dir / "adapter_model.bin"  # peft's pickled format
    if legacy.is_file() and legacy.stat().st_size > 0:
        return None
    return f"{weights} is missing"


def safetensors_problem(path: Path) -> str | None:
    """A .safetensors file read as safetensors does: an 8-byte header length, the JSON header,
    then the tensors' bytes, which must end where the file ends (else it was cut short)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little") if size >= 8 else -1
        if not 0 < length <= size - 8:
            return f"{path} is empty or cut short ({size} bytes)"
        try:
            header = json.loads(f.read(length))
            end = max((int(t["data_offsets"][1]) for name, t in header.items()
                       if name != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{path}: its header is unreadable (cut short?)"
    if 8 + length + end != size:
        return f"{path} is cut short ({size} bytes, its header lists more)"
    return None


class Run:
    """One run folder: its paths, what it holds, and the checks with one wording."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.template_path = self.path / "template.yaml"
        self.meta_path = self.path / "meta.json"
        self.adapter_dir = self.path / "adapter"
        self.merged_dir = self.path / "merged"
        self.knowledge_dir = self.path / "knowledge"
        self.gguf_dir = self.path / "gguf"
        self.eval_dir = self.path / "eval"

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # What is there

    def has_merged(self) -> bool:
        return (self.merged_dir / "config.json").is_file()

    def has_adapter(self) -> bool:
        return (self.adapter_dir / "adapter_config.json").is_file()

    def has_model(self) -> bool:
        return self.has_merged() or self.has_adapter()

    def has_knowledge(self) -> bool:
        """A knowledge index is there (or its previous version, when a save was killed
        between its two renames: builder.answering.knowledge.load_whole reads that one)."""
        return any((folder / "index.json").is_file() for folder in (
            self.knowledge_dir, self.knowledge_dir.with_name("knowledge.old")))

    # Reading

    def meta(self) -> dict:
        """meta.json written by `builder train`; {} when absent (a merged folder is enough to
        chat)."""
        if not self.meta_path.is_file():
            return {}
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise UserError(f"{self.meta_path}: not valid JSON ({err}); re-run `builder train`") \
                from None

    def config(self):
        """The run's resolved config: meta.json's copy (what training used), else config.yaml."""
        from builder.config import config_from_dict, load_config

        meta = self.meta()
        if meta.get("config"):
            return config_from_dict(meta["config"])
        if self.config_path.is_file():
            return load_config(self.config_path)
        return config_from_dict({})

    def template(self):
        from builder.prompts import parse_template

        if not self.template_path.is_file():
            raise UserError(f"{self.template_path}: missing; {self.path} was not written by "
                            "`builder train`")
        return parse_template(self.template_path.read_text(encoding="utf-8"),
                              str(self.template_path))

    def weights(self, use: str = "auto") -> tuple[Path, Path | None]:
        """(model folder, adapter folder or None) for use auto / merged / adapter."""
        if use not in ("auto", "merged", "adapter"):
            raise ValueError(f"use must be 'auto', 'merged' or 'adapter', not {use!r}")
        self.require()
        if use == "merged" or (use == "auto" and self.has_merged()):
            if not self.has_merged():
                raise UserError(f"{self.path}: no merged model in merged/; {self.make('merge')}")
            return self.merged_dir, None
        if not self.has_adapter():
            if use == "adapter":
                raise UserError(f"{self.path}: no LoRA adapter in adapter/; {self.make('train')}")
            raise UserError(f"{self.path}: neither merged/ nor adapter/ is there; "
                            f"{self.make('train')}, then `builder merge {self.path}`")
        return self.base_model_dir(), self.adapter_dir

    def base_model_dir(self) -> Path:
        path = self.meta().get("base_model_path")
        if not path or not Path(path).is_dir():
            raise UserError(f"{self.meta_path}: base model folder {path!r} not found; the adapter "
                            "and the eval need it (or merge on the training machine: "
                            "`builder merge`)")
        return Path(path)

    def gguf(self) -> Path:
        """The GGUF the run's export chose (gguf/report.json "default")."""
        try:
            report = json.loads((self.gguf_dir / "report.json").read_text(encoding="utf-8"))
            path = self.gguf_dir / report["default"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{self.gguf_dir}: no exported GGUF; {self.make('export')}") from None
        if not path.is_file():
            raise UserError(f"{path}: missing; {self.make('export')} again")
        return path

    def data_dir(self, given: str | Path | None = None) -> Path:
        """The prepared folder the run trained on (meta.json), or `given`."""
        folder = Path(given or self.meta().get("data_dir") or "(none recorded)")
        if not (folder / "report.json").is_file() or not (folder / "dataset").is_dir():
            raise UserError(f"{folder}: no prepared data folder there (meta.json records the "
                            "run's); pass --data PREPARED_DIR, made by `builder prepare FAQ_FILE "
                            "--out DIR`")
        return folder

    # The checks, worded once

    def make(self, stage: str) -> str:
        """How to make what `stage` writes: 'make it with `builder merge runs/x`'."""
        command = {"train": f"builder train PREPARED_DIR --out {self.path}",
                   "merge": f"builder merge {self.path}",
                   "index": f"builder index {self.path} FAQ_FILE",
                   "export": f"builder export {self.path} --format gguf"}[stage]
        return f"make it with `{command}`"

    def require(self) -> "Run":
        if not self.path.is_dir():
            raise UserError(f"{self.path}: no such run folder; {self.make('train')}")
        return self

    def require_trained(self) -> "Run":
        """A folder `builder train` wrote (meta.json)."""
        self.require()
        if not self.meta_path.is_file():
            raise UserError(f"{self.path} is not a run folder (no meta.json); {self.make('train')}")
        return self

    def require_model(self) -> "Run":
        self.require_trained()
        if not self.has_model():
            raise UserError(f"{self.path} has neither adapter/ nor merged/: finish training with "
                            f"`builder train PREPARED_DIR --out {self.path} --resume`")
        return self

    def require_knowledge(self) -> "Run":
        if not self.has_knowledge():
            make = self.make("index")
            raise UserError(f"{self.knowledge_dir}: missing; this run answers from its FAQ. "
                            f"{make[0].upper()}{make[1:]}")
        return self

    # Writing (each file whole or absent)

    def write_meta(self, meta: dict) -> None:
        write_atomic(self.meta_path, json.dumps(meta, ensure_ascii=False, indent=2))

    def write_config(self, cfg) -> None:
        write_atomic(self.config_path, cfg.to_yaml())

    def write_template(self, template) -> None:
        write_atomic(self.template_path, template.text)


KNOWLEDGE_LOCK = ".knowledge.lock"
KNOWLEDGE_LOCK_WAIT_S = 120  # an update of the same run takes seconds; a minute is a stuck one


@contextmanager
def knowledge_lock(run_dir: str | Path, wait_s: float = KNOWLEDGE_LOCK_WAIT_S):
    """Hold RUN/.knowledge.lock: the page and the CLI update a run's knowledge one at a time
    (an flock: a killed holder releases it)."""
    path = Path(run_dir) / KNOWLEDGE_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"{path}: another update of this run's knowledge has held "
                                    f"it for {wait_s:.0f} s; try again when it is done") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing releases the lock
