"""One server for many shops: the request's model picks the shop, each shop answers as its
own single-run server does (its knowledge, decline message, log), runs over one base share it,
a key asks only for its shops, shops load lazily within a memory budget, and a pushed model
serves from the Hub."""

import json

import pytest
from fastapi.testclient import TestClient
from fixtures import make_tiny_gemma, sample_rows, write_run

from builder.answering.chatbot import load_chatbot
from builder.answering.knowledge import Entry, Knowledge
from builder.config import Config
from builder.doors.api import build_app
from builder.doors.api_shops import ShopsDoor
from builder.doors.keys import Keys, add_key
from builder.doors.shops import Shops, find_runs
from builder.errors import UserError

NO_SHARING = ["rag.shared_answers=0"]  # every answer generated: what is compared is the model


def knowledge_of(rows):
    entries = [Entry(i, i + 2, r["instruction"], r["input"], r["output"])
               for i, r in enumerate(rows)]
    return Knowledge.build(entries, calibrate=False)


def adapter_run(folder, base, rows, seed: int, decline: str):
    """A run whose adapter is a random LoRA over `base` (distinct per seed), with its FAQ."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = Config()
    config.rag.decline_message = decline
    meta = {"base_model": "tiny-gemma3", "base_model_path": str(base), "end_token_ids": [1, 106],
            "backend": "hf", "precision": "fp32",
            "config": config.to_dict()}
    write_run(folder, "korean", meta=meta, config=config, knowledge=knowledge_of(rows))
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(folder / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(folder / "adapter")
    return folder


@pytest.fixture(scope="module")
def shops_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shops")
    base = make_tiny_gemma(root / "base")
    config = json.loads((base / "generation_config.json").read_text())
    (base / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [1, 106]}))
    rows = sample_rows(30)
    adapter_run(root / "runs" / "coffee", base, rows[:15], 1, "커피 가게: FAQ에 없는 질문입니다.")
    adapter_run(root / "runs" / "tea", base, rows[15:], 2, "차 가게: 고객센터로 문의해 주세요.")
    return root / "runs"


def ask(client, shop, question, key=None, path="/v1/chat/completions"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post(path, headers=headers, json={
        "model": shop, "max_tokens": 8, "user": "customer-1",
        "messages": [{"role": "user", "content": question}]})


def test_two_shops_answer_as_their_own_servers_over_one_base(shops_root):
    rows = sample_rows(30)
    coffee_q, tea_q = rows[0]["instruction"] + " 알려줘요", rows[19]["instruction"] + " 알려줘요"
    shops = Shops(find_runs([str(shops_root)]), settings=NO_SHARING)
    assert shops.names() == ["coffee", "tea"] and shops.loaded() == []
    client = TestClient(ShopsDoor(shops))
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["coffee", "tea"]

    served = {}
    for shop, question in (("coffee", coffee_q), ("tea", tea_q), ("coffee", tea_q)):
        response = ask(client, shop, question)
        assert response.status_code == 200, response.text
        served[shop, question] = response.json()["choices"][0]["message"]
    # one base model holds both shops' adapters
    names = shops.bases.adapter_name
    assert list(shops.bases.holding().values()) == [sorted([names("coffee"), names("tea")])]

    for (shop, question), message in served.items():  # the single-run server's answers
        alone = load_chatbot(shops_root / shop, "adapter", settings=NO_SHARING)
        expected = TestClient(build_app(alone, shop)).post("/v1/chat/completions", json={
            "model": shop, "max_tokens": 8,
            "messages": [{"role": "user", "content": question}]}).json()
        assert message["content"] == expected["choices"][0]["message"]["content"], shop
        assert message["sources"] == expected["choices"][0]["message"]["sources"]
    assert served["coffee", coffee_q]["content"] != served["tea", tea_q]["content"]
    # each shop its own FAQ and decline message: coffee knows nothing of tea's entry
    assert served["coffee", tea_q]["content"] == "커피 가게: FAQ에 없는 질문입니다."
    # and its own log
    assert [r["question"] for r in shops.log("tea").rows()] == [tea_q]
    assert sorted(r["question"] for r in shops.log("coffee").rows()) == sorted([coffee_q, tea_q])

    one = client.post("/shops/tea/v1/chat/completions", json={
        "model": "tea", "max_tokens": 8, "messages": [{"role": "user", "content": tea_q}]})
    assert one.json()["choices"][0]["message"]["content"] == served["tea", tea_q]["content"]
    assert ask(client, "juice", "?").json()["error"]["code"] == "model_not_found"


def test_a_key_asks_only_for_its_shops(shops_root, tmp_path):
    keys_file = tmp_path / "keys.json"
    coffee_key = add_key(keys_file, "coffee-site", ["coffee"])
    agency_key = add_key(keys_file, "agency", ["*"])
    assert coffee_key not in keys_file.read_text()  # only its hash is kept
    with pytest.raises(UserError, match="exists"):
        add_key(keys_file, "agency", ["tea"])

    shops = Shops(find_runs([str(shops_root)]), settings=NO_SHARING)
    client = TestClient(ShopsDoor(shops, Keys(keys_file)))
    assert ask(client, "coffee", "배송비는 얼마인가요?").status_code == 401
    assert ask(client, "coffee", "배송비는 얼마인가요?", key="sk-wrong").status_code == 401
    refused = ask(client, "tea", "배송비는 얼마인가요?", key=coffee_key)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "shop_not_allowed"
    refused = ask(client, None, "?", key=coffee_key, path="/shops/tea/v1/chat/completions")
    assert refused.status_code == 403
    assert "tea" not in shops.loaded()  # refused before anything of tea's was loaded
    assert ask(client, "coffee", "배송비는 얼마인가요?", key=coffee_key).status_code == 200
    assert ask(client, "tea", "배송비는 얼마인가요?", key=agency_key).status_code == 200
    models = client.get("/v1/models", headers={"Authorization": f"Bearer {coffee_key}"})
    assert [m["id"] for m in models.json()["data"]] == ["coffee"]

    add_key(keys_file, "tea-site", ["tea"])  # a running server reads the file again
    from builder.doors.keys import remove_key

    remove_key(keys_file, "coffee-site")
    assert ask(client, "coffee", "배송비는 얼마인가요?", key=coffee_key).status_code == 401


def test_shops_load_on_their_first_question_within_the_memory_budget(shops_root):
    from builder.doors.shops import footprint, model_bytes
    from builder.run import Run

    run = Run(shops_root / "coffee")
    adapter, _ = footprint(run, "auto", True)
    room = (model_bytes(run.base_model_dir()) + adapter * 1.5) / 2**30  # one shop, not two
    shops = Shops(find_runs([str(shops_root)]), settings=NO_SHARING, memory_gb=room)
    question = sample_rows(30)[0]["instruction"] + " 알려줘요"
    first = shops.bot("coffee").reply(question, max_new_tokens=8).text
    shops.bot("tea")
    assert shops.loaded() == ["tea"]  # coffee, asked least recently, was dropped
    assert list(shops.bases.holding().values()) == [[shops.bases.adapter_name("tea")]]
    assert shops.bot("coffee").reply(question, max_new_tokens=8).text == first
    assert shops.loaded() == ["coffee"]

    roomy = Shops(find_runs([str(shops_root)]), settings=NO_SHARING, memory_gb=64)
    roomy.bot("coffee"), roomy.bot("tea")
    assert roomy.loaded() == ["coffee", "tea"]
    assert roomy.in_memory() == model_bytes(run.base_model_dir()) + adapter + footprint(
        Run(shops_root / "tea"), "auto", True)[0]


def test_what_a_server_of_many_shops_is_given(shops_root, tmp_path):
    assert list(find_runs([str(shops_root / "tea"), str(shops_root / "coffee")])) == [
        "tea", "coffee"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a run folder nor a folder of runs"):
        find_runs([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="no such run folder"):
        find_runs([str(tmp_path / "missing")])
    twin = tmp_path / "other" / "tea"
    write_run(twin, "korean", knowledge=knowledge_of(sample_rows(3)))
    with pytest.raises(UserError, match="two shops are named 'tea'"):
        find_runs([str(shops_root), str(twin)])


def test_a_pushed_model_is_served_from_the_hub(hub_server, shops_root, tmp_path, caplog):
    from builder.deploy import hub
    from builder.training.merge import merge

    run = tmp_path / "bakery"
    import shutil

    shutil.copytree(shops_root / "coffee", run)
    merge(run, log=lambda *_: None)
    hub.push_model(run, "tester/bakery-bot", token=hub_server.token)

    pulled = hub.pull_run("tester/bakery-bot", token=hub_server.token, root=tmp_path / "hub")
    assert pulled == tmp_path / "hub" / "tester" / "bakery-bot"
    assert "base_model_path" not in (pulled / "meta.json").read_text()  # no local paths
    question = sample_rows(30)[0]["instruction"] + " 알려줘요"
    local = load_chatbot(run, "merged", settings=NO_SHARING).reply(question, max_new_tokens=8)
    served = load_chatbot(pulled, settings=NO_SHARING).reply(question, max_new_tokens=8)
    assert (served.text, served.sources[0].entry.question) == (
        local.text, local.sources[0].entry.question)
    assert served.text != run.joinpath("config.yaml").read_text()  # (a real answer)
    assert hub.pull_run("tester/bakery-bot", token=hub_server.token, root=tmp_path / "hub") \
        == pulled  # again: from the cache

    # the owner changed the FAQ here (the inbox), then the Hub got a newer push: kept
    import os

    index = pulled / "knowledge" / "index.json"
    os.utime(index, ns=(index.stat().st_atime_ns, index.stat().st_mtime_ns + 10**9))
    (run / "knowledge" / "note.txt").write_text("newer push")
    hub.push_model(run, "tester/bakery-bot", token=hub_server.token)
    hub.pull_run("tester/bakery-bot", token=hub_server.token, root=tmp_path / "hub")
    assert not (pulled / "knowledge" / "note.txt").exists()
    assert "the FAQ was changed here since the last pull; kept" in caplog.text


def test_each_shop_has_its_own_web_chat_under_its_path(shops_root):
    from builder.doors.channels import webchat

    shops = Shops(find_runs([str(shops_root)]), settings=NO_SHARING)
    client = TestClient(ShopsDoor(shops, channels=[webchat.mount]))
    page = client.get("/shops/tea/chat")
    assert page.status_code == 200 and "<title>tea</title>" in page.text
    assert shops.loaded() == ["tea"]
    question = sample_rows(30)[19]["instruction"]  # tea's FAQ question, word for word
    events = client.post("/shops/tea/chat/api/answer", json={
        "session": "session-1", "messages": [{"role": "user", "content": question}]}).text
    assert sample_rows(30)[19]["output"][:20] in events
    last = shops.log("tea").rows()[-1]
    assert (last["channel"], last["question"]) == ("web", question)
    assert client.get("/shops/juice/chat").json()["error"]["code"] == "model_not_found"


def test_keys_files_that_are_missing_or_removed_refuse(tmp_path, caplog):
    with pytest.raises(UserError, match="no such keys file"):
        Keys(tmp_path / "keys.json")
    key = add_key(tmp_path / "keys.json", "site", ["coffee"])
    keys = Keys(tmp_path / "keys.json")
    assert keys.allows(key, "coffee") and not keys.allows(key, "tea")
    assert keys.shops_of("sk-é") is None  # (a header that is not ASCII: no error)
    (tmp_path / "keys.json").write_text("{broken")
    assert keys.allows(key, "coffee") and "not read" in caplog.text  # the last good ones
    (tmp_path / "keys.json").unlink()
    assert not keys.allows(key, "coffee")  # removing the file revokes its keys


def test_a_shop_named_with_a_dot_still_training_and_its_feedback(shops_root, tmp_path):
    import shutil
    import time

    runs = tmp_path / "runs"
    shutil.copytree(shops_root / "tea", runs / "tea.v2", symlinks=True,
                    ignore=shutil.ignore_patterns("conversations.db*", "log-salt"))
    shutil.copytree(shops_root / "coffee", runs / "coffee", symlinks=True,
                    ignore=shutil.ignore_patterns("adapter", "conversations.db*", "log-salt"))
    shops = Shops(find_runs([str(runs)]), settings=NO_SHARING)
    client = TestClient(ShopsDoor(shops))
    tea_q = sample_rows(30)[19]["instruction"] + " 알려줘요"
    answered = ask(client, "tea.v2", tea_q)
    assert answered.status_code == 200, answered.text
    coffee_q = sample_rows(30)[0]["instruction"] + " 알려줘요"
    message = ask(client, "coffee", coffee_q).json()["choices"][0]["message"]
    assert message["faq_only"] is True  # coffee is still training: its FAQ answers
    shutil.copytree(shops_root / "coffee" / "adapter", runs / "coffee" / ".adapter-staging")
    (runs / "coffee" / ".adapter-staging").rename(runs / "coffee" / "adapter")
    deadline = time.monotonic() + 60
    while not shops.bot("coffee").trained:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert ask(client, "coffee", coffee_q).json()["choices"][0]["message"]["faq_only"] is False
    # a 👍 without the shop's name reaches the shop whose answer it was
    vote = client.post("/v1/feedback", json={"id": answered.json()["id"], "value": 1})
    assert vote.status_code == 200, vote.text
    assert [r["feedback"] for r in shops.log("tea.v2").rows()] == [1]
    assert client.post("/v1/feedback", json={"id": "chatcmpl-none", "value": 1}
                       ).status_code == 404
