"""Publishing to the Hugging Face Hub: a prepared data folder or a trained model, with its card.

    push_dataset("runs/data", "OWNER/NAME")                  # Parquet splits + CSVs + dataset card
    push_model("runs/NAME", "OWNER/NAME", what="merged")     # merged/ (or adapter/) + model card
    push_gguf("runs/NAME", "OWNER/NAME-GGUF")                 # the GGUFs export kept + its card
    pull_run("OWNER/NAME")                                    # a pushed model as a run folder

This module owns the token lookup (the token is never printed, logged, written or put in an
error), the repo id check, the upload folder (Parquet shards written deterministically, so the
same data re-pushed makes no new commit), keeping a repo private when asked, both cards, and
turning every network or auth failure into a `UserError` that says what to do. huggingface_hub
reads HF_ENDPOINT when it is imported, so it is imported inside the functions.
"""

import json
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.deploy.cards import REPO_ID, SPLITS, dataset_card, gguf_card, model_card
from builder.errors import UserError

log = logging.getLogger(__name__)

PREPARED_FILES = ("train.csv", "test.csv", "dataset", "report.json")
NO_TOKEN = (
    "no Hugging Face token found: set HF_TOKEN (a write token from "
    "https://huggingface.co/settings/tokens) or run `hf auth login`"
)


@dataclass
class PushResult:
    repo_id: str
    url: str
    commit: str | None  # the repo's head after the push
    changed: bool  # False when the repo already held exactly these files
    made_private: bool = False  # True when the repo was public and this push made it private


def resolve_token(token: str | None = None) -> str | None:
    """The explicit token, else huggingface_hub's: $HF_TOKEN, then the saved `hf auth login`."""
    from huggingface_hub import get_token

    return token or get_token()


def check_repo_id(repo_id: str) -> str:
    bad = "--" in repo_id or ".." in repo_id or repo_id.endswith((".git", "."))
    if not REPO_ID.match(repo_id or "") or bad:
        raise UserError(f"{repo_id!r} is not a Hub repo id: expected OWNER/NAME, e.g. "
                        "my-shop/faq-ko (letters, digits, '-', '_' and '.'; no '--' or '..')")
    return repo_id


# ---------------------------------------------------------------------------------------------
# Talking to the Hub


@contextmanager
def _hub_errors(repo_id: str, token: str):
    """Turn huggingface_hub/httpx failures into UserErrors whose message never holds the token."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        from httpx2 import HTTPError  # huggingface_hub 2.x
    except ImportError:
        from httpx import HTTPError  # huggingface_hub 1.x (the GPU set)

    try:
        yield
    except UserError as error:  # already says what to do; its cause must not be re-read below
        raise UserError(str(error).replace(token, "***")) from None
    except Exception as error:
        cause = error
        while cause is not None and not isinstance(cause, (HfHubHTTPError, HTTPError)):
            cause = cause.__cause__ or cause.__context__  # LFS uploads wrap errors in RuntimeError
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(cause, HfHubHTTPError) and status in (401, 403):
            message = "the Hugging Face token was refused: set HF_TOKEN or run `hf auth login`"
            message += f" (with a token that may write to {repo_id.split('/')[0]}/)"
        elif isinstance(cause, RepositoryNotFoundError):
            message = f"{repo_id} was not found on {constants.ENDPOINT}"
        elif isinstance(cause, HfHubHTTPError):
            detail = cause.server_message or cause
            message = f"the Hub refused the upload to {repo_id} ({status}): {detail}"
        elif isinstance(cause, HTTPError):
            reason = type(cause).__name__
            message = f"cannot reach {constants.ENDPOINT}: check the network ({reason})"
        elif isinstance(error, OfflineModeIsEnabled):
            message = "HF_HUB_OFFLINE is set: unset it to push to the Hub"
        elif isinstance(error, ValueError) and "README.md" in str(error):
            message = f"the Hub rejected the card's metadata: {error}"
        else:
            raise
        raise UserError(message.replace(token, "***")) from None


def _make_private(api, repo_id: str, repo_type: str, url: str) -> None:
    """Turn an existing public repo private, or refuse the push while nothing is uploaded yet."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.update_repo_settings(repo_id, private=True, repo_type=repo_type)
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise UserError(
            f"{repo_id} already exists and is public, and making it private was refused "
            f"({status}: {error.server_message or 'no reason given'}): nothing was uploaded. "
            f"Make it private at {url}/settings (or use a token that may change its settings), "
            "or push it as a public repo on purpose") from None
    log.warning("%s was public: made it private before uploading", repo_id)


def _commit(repo_id: str, repo_type: str, files: dict, message: str, private: bool, token: str,
            stale: str) -> PushResult:
    """Create or reuse the repo and put `files` ({path in repo: local Path or bytes}) in one commit.

    Remote files matching the glob `stale` that are not in `files` are deleted in the same commit
    (old shards). Unchanged files are skipped by huggingface_hub; if nothing changed, no commit.
    A public repo asked to be private is made private before anything is uploaded.
    """
    # Not HfApi.upload_folder: push_model's files do not lie in one folder (its README replaces
    # the adapter's, and copying the weights would cost GBs), and with hf_xet installed (the
    # default) upload_folder switches to a multi-commit upload that splits big folders into
    # "part N" commits and skips the card's metadata check. create_commit makes one commit and,
    # like upload_folder, skips unchanged files and makes no empty commit.
    import fnmatch

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    with _hub_errors(repo_id, token):
        # private=None rather than False: a new repo then follows the owner's default visibility
        url = api.create_repo(repo_id, repo_type=repo_type, private=private or None, exist_ok=True)
        repo = api.repo_info(repo_id, repo_type=repo_type)
        made_private = private and not repo.private  # create_repo leaves an existing repo as is
        if made_private:
            _make_private(api, repo_id, repo_type, str(url))
        head = repo.sha
        remote = api.list_repo_files(repo_id, repo_type=repo_type)
        old = [p for p in remote if fnmatch.fnmatch(p, stale) and p not in files]
        operations = [CommitOperationDelete(p) for p in old]
        operations += [CommitOperationAdd(p, str(f) if isinstance(f, Path) else f)
                       for p, f in files.items()]
        info = api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type)
    return PushResult(repo_id=repo_id, url=str(url), commit=info.oid, changed=info.oid != head,
                      made_private=made_private)


# ---------------------------------------------------------------------------------------------
# Dataset


def push_dataset(prepared_dir, repo_id: str, *, private: bool = False,
                 token: str | None = None) -> PushResult:
    """Upload a prepared data folder as a dataset repo in one commit; a no-op if nothing changed."""
    check_repo_id(repo_id)
    prepared_dir = Path(prepared_dir)
    for name in PREPARED_FILES:
        if not (prepared_dir / name).exists():
            raise UserError(f"{prepared_dir / name} is missing: {prepared_dir} is not a prepared "
                            "data folder; make one with `builder prepare FAQ_FILE --out DIR`")
    token = resolve_token(token)
    if not token:
        raise UserError(NO_TOKEN)

    from datasets import load_from_disk

    report = json.loads((prepared_dir / "report.json").read_text(encoding="utf-8"))
    dataset = load_from_disk(str(prepared_dir / "dataset"))
    with tempfile.TemporaryDirectory(prefix="builder-push-") as staging:
        staging = Path(staging)
        files: dict = {}
        for split in SPLITS:
            path_in_repo = f"data/{split}-00000-of-00001.parquet"
            (staging / path_in_repo).parent.mkdir(parents=True, exist_ok=True)
            dataset[split].to_parquet(str(staging / path_in_repo))  # same rows -> same bytes
            files[path_in_repo] = staging / path_in_repo
        for name in ("train.csv", "test.csv"):
            files[name] = prepared_dir / name
        files["README.md"] = dataset_card(repo_id, report).encode()
        sizes = report.get("split", {})
        message = (f"Upload {report.get('source_file', 'FAQ')} "
                   f"({sizes.get('train')} train / {sizes.get('test')} test)")
        return _commit(repo_id, "dataset", files, message, private, token, stale="data/*")


# ---------------------------------------------------------------------------------------------
# Model


def push_model(run_dir, repo_id: str, *, what: str = "merged", private: bool = False,
               token: str | None = None) -> PushResult:
    """Upload run_dir/merged/ (or run_dir/adapter/) with a generated model card in one commit."""
    if what not in ("merged", "adapter"):
        raise UserError(f"what must be 'merged' or 'adapter', not {what!r}")
    check_repo_id(repo_id)
    run_dir = Path(run_dir)
    folder = run_dir / what
    if not folder.is_dir() or not any(folder.iterdir()):
        make = (f"builder merge {run_dir}" if what == "merged"
                else f"builder train DATA_DIR --out {run_dir}")
        raise UserError(f"{folder} is missing: make it with `{make}`")
    token = resolve_token(token)
    if not token:
        raise UserError(NO_TOKEN)

    card = model_card(run_dir, what, repo_id=repo_id)
    files: dict = {p.relative_to(folder).as_posix(): p
                   for p in sorted(folder.rglob("*")) if p.is_file()}
    knowledge = run_dir / "knowledge"  # the FAQ the model answers from goes with it
    if knowledge.is_dir():
        files.update((f"knowledge/{p.relative_to(knowledge).as_posix()}", p)
                     for p in sorted(knowledge.rglob("*")) if p.is_file())
    files["README.md"] = card.encode()  # replaces the stub card peft writes into adapter/
    files.update(serving_files(run_dir))
    message = f"Upload {what} model from {run_dir.name}"
    return _commit(repo_id, "model", files, message, private, token, stale="*.safetensors")


def serving_files(run_dir: Path) -> dict:
    """What `builder serve OWNER/NAME` needs besides the weights and knowledge, under builder/:
    the template, the config (the answering settings, the decline message) and the end
    tokens; never the run's local paths."""
    from builder.run import Run

    run = Run(run_dir)
    if not run.template_path.is_file():
        return {}
    files = {"builder/template.yaml": run.template_path}
    try:
        meta, config = run.meta(), run.config().to_dict()
    except UserError as err:  # (the weights still go up; the server uses default settings)
        log.warning("%s: the run's settings are not pushed: %s", run_dir, err)
        return files
    for section in config.values():  # a local folder (a base model, an embedder) is no
        for key, value in section.items():  # one else's: its name only
            if isinstance(value, str) and value.startswith(("/", "~", "./", "../")):
                section[key] = Path(value).name
    base = meta.get("base_model")
    serving = {"base_model": Path(base).name if isinstance(base, str) and "/" in base and
               Path(base).exists() else base, "end_token_ids": meta.get("end_token_ids"),
               "config": config}
    files["builder/meta.json"] = json.dumps(serving, ensure_ascii=False, indent=2).encode()
    return files


def pull_run(repo_id: str, token: str | None = None, root: Path | None = None) -> Path:
    """A model repo the push button published (merged weights, knowledge/, builder/), downloaded
    once (huggingface_hub's cache; again only when the repo changed) and laid out as a run
    folder ROOT/OWNER/NAME: merged/ is the download, knowledge/ a copy (the inbox writes to it),
    template.yaml and meta.json from builder/. Returns the run folder."""
    from builder.embedded import cache_root
    from builder.run import Run, knowledge_lock, write_atomic

    check_repo_id(repo_id)
    token = resolve_token(token)
    from huggingface_hub import snapshot_download

    try:
        with _hub_errors(repo_id, token or "\0"):
            snapshot = Path(snapshot_download(repo_id, repo_type="model", token=token))
    except UserError as err:  # offline: the copy downloaded before, if there is one
        try:
            snapshot = Path(snapshot_download(repo_id, repo_type="model", token=token,
                                              local_files_only=True))
        except Exception:  # noqa: BLE001 (never downloaded: the first error says why)
            raise err from None
        log.warning("%s: the Hub did not answer (%s); serving the copy downloaded before",
                    repo_id, err)
    if not (snapshot / "builder" / "template.yaml").is_file():
        raise UserError(f"{repo_id}: not a model the builder pushed with its template (no "
                        "builder/template.yaml); push it again with `builder push-model`")
    run = Run((root or cache_root() / "hub-runs") / repo_id)
    run.path.mkdir(parents=True, exist_ok=True)
    merged = run.merged_dir
    if merged.is_symlink() and merged.resolve() != snapshot.resolve():
        merged.unlink()
    if not merged.exists():
        merged.symlink_to(snapshot, target_is_directory=True)
    write_atomic(run.template_path, (snapshot / "builder" / "template.yaml").read_bytes())
    meta = snapshot / "builder" / "meta.json"
    write_atomic(run.meta_path, meta.read_bytes() if meta.is_file() else b"{}")
    with knowledge_lock(run.path):
        _pull_knowledge(run, snapshot)
    return run.path


def _pull_knowledge(run, snapshot: Path) -> None:
    """The repo's knowledge/ into the run, unless the FAQ was changed here since the last pull
    (rows the owner added from the inbox): that one is kept, with a warning."""
    import shutil

    from builder.run import write_atomic

    seen = run.path / ".pulled"
    try:
        pulled = json.loads(seen.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pulled = {}
    index = run.knowledge_dir / "index.json"
    local = index.stat().st_mtime_ns if index.is_file() else None
    if not (snapshot / "knowledge").is_dir() or pulled.get("snapshot") == str(snapshot):
        return
    if local is not None and pulled.get("index_mtime_ns") not in (None, local):
        log.warning("%s: the FAQ was changed here since the last pull; kept (the Hub's newer "
                    "one is not used: `builder index %s FAQ_FILE` to replace it)", run.path,
                    run.path)
        return
    staging = run.path / ".knowledge-pulling"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(snapshot / "knowledge", staging)
    old = run.knowledge_dir.with_name("knowledge.old")  # (read while the new one is renamed)
    shutil.rmtree(old, ignore_errors=True)
    if run.knowledge_dir.exists():
        run.knowledge_dir.rename(old)
    staging.rename(run.knowledge_dir)
    shutil.rmtree(old, ignore_errors=True)
    write_atomic(seen, json.dumps({"snapshot": str(snapshot),
                                   "index_mtime_ns": index.stat().st_mtime_ns}))


# ---------------------------------------------------------------------------------------------
# GGUF (builder export)


def kept_ggufs(folder: Path, run_dir: Path) -> list[Path]:
    """The GGUF files `builder export` kept: those report.json lists (its quants' files and its
    default), never any other .gguf lying in the folder (a refused quant, a copy)."""
    report_path = folder / "report.json"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = {}
    report = report if isinstance(report, dict) else {}
    quants = report.get("quants") if isinstance(report.get("quants"), dict) else {}
    names = [q.get("file") for q in quants.values() if isinstance(q, dict)]
    names = list(dict.fromkeys(n for n in [*names, report.get("default")] if n))
    export = f"builder export {run_dir} --format gguf"
    if not names:
        raise UserError(f"{folder}: no GGUF; make one with `{export}`")
    files = []
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".gguf"):
            raise UserError(f"{report_path} names {name!r}, not a .gguf file in {folder}; "
                            f"export again with `{export}`")
        if not (folder / name).is_file():
            raise UserError(f"{folder / name}: listed in {report_path} but missing; export it "
                            f"again with `{export}`")
        files.append(folder / name)
    return files


def push_gguf(run_dir, repo_id: str, *, private: bool = False,
              token: str | None = None) -> PushResult:
    """Upload the GGUF files RUN/gguf/report.json lists, its Modelfile and report.json, with
    its own card."""
    check_repo_id(repo_id)
    run_dir = Path(run_dir)
    folder = run_dir / "gguf"
    ggufs = kept_ggufs(folder, run_dir)
    token = resolve_token(token)
    if not token:
        raise UserError(NO_TOKEN)
    files: dict = {p.name: p for p in ggufs}
    files.update((name, folder / name) for name in ("Modelfile", "report.json")
                 if (folder / name).is_file())
    files["README.md"] = gguf_card(run_dir, repo_id=repo_id).encode()
    message = f"Upload GGUF ({', '.join(p.name for p in ggufs)}) from {run_dir.name}"
    return _commit(repo_id, "model", files, message, private, token, stale="*.gguf")
