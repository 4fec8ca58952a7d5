"""Guards backend choice, base-model resolution, end tokens and the Unsloth wiring (with a stand-in
module: no GPU here, so the real Unsloth path can only run on a CUDA machine)."""

import sys
import types
from pathlib import Path

import pytest

import builder.training.models as models
from builder.config import load_config
from builder.errors import UserError

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    "wanted, has_unsloth, cuda, expected",
    [("auto", False, False, "hf"), ("auto", True, False, "hf"), ("auto", False, True, "hf"),
     ("auto", True, True, "unsloth"), ("hf", True, True, "hf"), ("unsloth", True, True, "unsloth")],
)
def test_pick_backend(monkeypatch, wanted, has_unsloth, cuda, expected):
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name: object() if has_unsloth and name == "unsloth" else None)
    monkeypatch.setattr(models, "cuda_available", lambda: cuda)
    cfg = load_config(None, [f"train.backend={wanted}"])
    assert models.pick_backend(cfg) == expected


def test_forcing_unsloth_without_gpu_or_package_says_why(monkeypatch):
    cfg = load_config(None, ["train.backend=unsloth"])
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="not installed"):
        models.pick_backend(cfg)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(models, "cuda_available", lambda: False)
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        models.pick_backend(cfg)


def test_resolve_base_model(tmp_path):
    assert Path(models.resolve_base_model("embedded:gemma-3-270m")).joinpath("config.json").is_file()
    with pytest.raises(UserError, match="needs a config.json"):
        models.resolve_base_model(str(tmp_path))
    with pytest.raises(UserError, match="unknown model"):
        models.resolve_base_model("gemma")
    with pytest.raises(UserError, match="cannot get model 'nobody/no-such-model'"):
        models.resolve_base_model("nobody/no-such-model")


def test_qlora_on_cpu_is_refused_clearly():
    cfg = load_config(None, ["model.load_in_4bit=true"])
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        models.load_hf(cfg, models.resolve_base_model("embedded:gemma-3-270m"))


def test_end_token_ids_are_special_tokens_only():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models.resolve_base_model("embedded:gemma-3-270m"))
    assert models.end_token_ids(tokenizer) == [1, 106]  # <eos>, <end_of_turn>; not the text '</s>'


def test_unsloth_loader_passes_the_production_recipe(monkeypatch):
    calls = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            calls["from_pretrained"] = kwargs
            return "model", "tokenizer"

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls["get_peft_model"] = kwargs
            return "peft-model"

    fake = types.ModuleType("unsloth")
    fake.FastLanguageModel = FastLanguageModel
    monkeypatch.setitem(sys.modules, "unsloth", fake)
    monkeypatch.setattr(models, "precision", lambda cfg, on_cuda: "bf16")
    cfg = load_config(ROOT / "configs" / "llama3-open-ko-8b.yaml")
    assert models.load_unsloth(cfg, "/models/llama") == ("peft-model", "tokenizer")
    import torch

    assert calls["from_pretrained"] == {"model_name": "/models/llama", "max_seq_length": 4096,
                                        "dtype": torch.bfloat16, "load_in_4bit": True}
    assert calls["get_peft_model"] == {
        "r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "bias": "none", "random_state": 123,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "use_gradient_checkpointing": "unsloth",
    }


def test_a_tokenizer_is_loaded_once_per_content_of_its_files(tmp_path):
    import json
    import shutil

    from builder.embedded import ensure_embedded_model

    source = ensure_embedded_model()
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder in (a, b, c):
        folder.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(source / name, folder / name)
    config = json.loads((c / "tokenizer_config.json").read_text())
    (c / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 77}))
    first = models.load_tokenizer(a)
    assert models.load_tokenizer(b) is first  # another folder, the same files: no second load
    other = models.load_tokenizer(c)  # changed files: loaded anew, with what they say
    assert other is not first and other.model_max_length == 77
    assert first("배송비는 얼마인가요?")["input_ids"] == other("배송비는 얼마인가요?")["input_ids"]
