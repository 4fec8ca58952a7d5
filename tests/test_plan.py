"""Guards builder/training/plan.py: LoRA counts match peft and Unsloth; the memory estimate moves right."""

import json

import pytest

from builder.config import LORA_TARGETS, config_from_dict
from builder.errors import UserError
from builder.training.plan import architecture_for, format_plan, plan

LLAMA_8B = "beomi/Llama-3-Open-Ko-8B-Instruct-preview"


def production(**changes):
    """The Llama-3-Open-Ko-8B QLoRA production settings, with section.key changes applied."""
    data = {
        "model": {"name": LLAMA_8B, "max_seq_length": 4096, "load_in_4bit": True},
        "lora": {"r": 16, "alpha": 32, "target_modules": list(LORA_TARGETS)},
        "train": {"batch_size": 2, "grad_accum": 4, "optimizer": "adamw_8bit",
                  "gradient_checkpointing": "unsloth"},
    }
    for key, value in changes.items():
        section, name = key.split("__")
        data[section][name] = value
    return config_from_dict(data)


@pytest.fixture(scope="module")
def llama_plan():
    return plan(production())


def test_llama3_8b_counts_match_unsloth(llama_plan):
    assert llama_plan.total_params == 8_030_261_248
    assert llama_plan.trainable_params == 41_943_040, "Unsloth's notebooks print 41,943,040"
    report = format_plan(llama_plan)
    assert "trainable LoRA parameters: 41,943,040 (0.52% of 8,030,261,248)" in report
    assert "ESTIMATE" in report and "total" in report


def test_smaller_rank_and_fewer_targets_lower_the_count(llama_plan):
    assert plan(production(lora__r=8)).trainable_params == llama_plan.trainable_params // 2
    fewer = plan(production(lora__target_modules=["q_proj", "v_proj"])).trainable_params
    assert 0 < fewer < llama_plan.trainable_params


def test_memory_estimate_moves_the_right_way(llama_plan):
    sixteen_bit = plan(production(model__load_in_4bit=False))
    assert llama_plan.total_gib < sixteen_bit.total_gib

    def activations(p):
        return next(v for k, v in p.memory_gib.items() if k.startswith("activations"))

    no_checkpointing = plan(production(train__gradient_checkpointing="false"))
    assert activations(llama_plan) < activations(no_checkpointing)
    bigger_batch = plan(production(train__batch_size=4))
    assert bigger_batch.total_gib > llama_plan.total_gib
    assert activations(bigger_batch) > activations(llama_plan)


def write_model_folder(folder, model_config) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(model_config.to_json_string(), encoding="utf-8")
    return str(folder)


def tiny_configs():
    from transformers import Gemma3TextConfig, LlamaConfig

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=256)
    return {
        "llama": LlamaConfig(num_key_value_heads=2, **small),
        "gemma3": Gemma3TextConfig(num_key_value_heads=1, head_dim=16, **small),
    }


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
@pytest.mark.parametrize("targets", [LORA_TARGETS, ["q_proj", "down_proj"]])
def test_lora_count_matches_peft(tmp_path, kind, targets):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model_config = tiny_configs()[kind]
    folder = write_model_folder(tmp_path / kind, model_config)
    cfg = config_from_dict({"model": {"name": folder}, "lora": {"r": 8, "target_modules": targets}})
    p = plan(cfg, device="cpu")

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config)
    assert p.total_params == sum(t.numel() for t in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    assert p.trainable_params == peft_model.get_nb_trainable_parameters()[0]


def test_unknown_model_names_it_and_the_way_out():
    with pytest.raises(UserError) as err:
        architecture_for("someone/unknown-model-7b")
    message = str(err.value)
    assert "someone/unknown-model-7b" in message
    assert LLAMA_8B in message and "config.json" in message


def test_local_folder_with_config_json(tmp_path):
    folder = write_model_folder(tmp_path / "my-model", tiny_configs()["llama"])
    assert architecture_for(folder)["model_type"] == "llama"
    with pytest.raises(UserError, match="no config.json"):
        architecture_for(str(tmp_path))


def test_unmatched_target_module_is_named(tmp_path):
    folder = write_model_folder(tmp_path / "m", tiny_configs()["llama"])
    cfg = config_from_dict({"model": {"name": folder}, "lora": {"target_modules": ["qkv_proj"]}})
    with pytest.raises(UserError, match="qkv_proj"):
        plan(cfg)


def test_embedded_gemma_plan_on_cpu():
    cfg = config_from_dict({"model": {"precision": "fp32", "max_seq_length": 512},
                            "train": {"batch_size": 4}})
    p = plan(cfg, device="cpu")
    assert 260e6 < p.total_params < 275e6
    assert p.architecture["model_type"] == "gemma3_text"
    assert not any("CUDA" in label for label in p.memory_gib)
    assert "base weights (fp32)" in p.memory_gib


def test_shipped_architectures_are_the_public_configs():
    llama = architecture_for("meta-llama/Meta-Llama-3-8B")
    assert (llama["hidden_size"], llama["num_hidden_layers"], llama["vocab_size"]) == (
        4096, 32, 128256)
    assert json.dumps(architecture_for("google/gemma-3-270m")) == json.dumps(
        architecture_for("embedded:gemma-3-270m"))
