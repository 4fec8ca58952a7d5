"""Guards merge-models: SLERP between two different tiny runs and two embedded-model runs (t=0, t=1, in between), dus layer count, the run folder, clear errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("mergekit", reason="the `merge` extra: pip install -c constraints/cpu.txt '.[merge]'")

from builder.answering.chatbot import load_chatbot  # noqa: E402
from builder.doors.cli import main  # noqa: E402
from builder.errors import UserError  # noqa: E402
from builder.training.merge_models import merge_models  # noqa: E402
from fixtures import PLAIN_TEMPLATE, left_staging, make_tiny_gemma, write_run  # noqa: E402


def make_run(run: Path, base: Path, seed: int) -> Path:
    """A run folder whose merged/ is the base moved by its own random 'fine-tune' (bf16, as
    `builder merge` writes it): two seeds give genuinely different models, so SLERP does not
    fall back to linear."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * param.std().clamp(min=1e-3))
    model.to(torch.bfloat16).save_pretrained(run / "merged")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, run / "merged" / name)
    return write_run(run, PLAIN_TEMPLATE, meta={
        "base_model": "embedded:gemma-3-270m", "base_model_path": str(base),
        "template": "korean-plain", "end_token_ids": [1, 106]})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge-models")
    base = make_tiny_gemma(tmp / "base")
    return make_run(tmp / "a", base, 1), make_run(tmp / "b", base, 2)


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    return {k: v.float() for k, v in out.items()}


def test_slerp_is_each_parent_at_the_ends_and_neither_between(runs, tmp_path):
    a, b = runs
    wa, wb = weights(a / "merged"), weights(b / "merged")
    ends = {}
    for t in (0.0, 1.0, 0.5):
        out = merge_models([a, b], tmp_path / f"t{t}", method="slerp", t=t, log=lambda *_: None)
        ends[t] = weights(out / "merged")
        assert set(ends[t]) == set(wa)
    name = "model.layers.0.mlp.up_proj.weight"
    for key in wa:
        assert torch.allclose(ends[0.0][key], wa[key], atol=1e-2), key
        assert torch.allclose(ends[1.0][key], wb[key], atol=1e-2), key
    middle, apart = ends[0.5][name], (wb[name] - wa[name]).norm()
    assert (middle - wa[name]).norm() > 0.3 * apart and (middle - wb[name]).norm() > 0.3 * apart
    # the run folder: merged/ + template + meta with the recipe; chat loads and answers
    out = tmp_path / "t0.5"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["merge_recipe"]["method"] == "slerp" and meta["merge_recipe"]["t"] == 0.5
    assert meta["merge_recipe"]["runs"] == [str(a.resolve()), str(b.resolve())]
    assert (out / "template.yaml").is_file() and (out / "merged" / "generation_config.json").is_file()
    reply = load_chatbot(out).reply("배송비 얼마임?", max_new_tokens=4)
    assert isinstance(reply.text, str)


def test_dus_stacks_two_layer_ranges(runs, tmp_path, capsys):
    a, _ = runs
    assert main(["merge-models", str(a), "--method", "dus", "--layers", "2", "1",
                 "--out", str(tmp_path / "deep")]) == 0
    assert "needs further training" in capsys.readouterr().out
    config = json.loads((tmp_path / "deep" / "merged" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3  # layers 0-1, then 1 again
    assert len(config["layer_types"]) == 3
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "deep" / "merged")
    assert len(model.model.layers) == 3


def test_merging_again_removes_the_staging_folders_a_killed_merge_left(runs, tmp_path):
    """merge-models removes the .merging-* folders a killed merge left in OUT, not one a
    running merge writes."""
    out = write_run(tmp_path / "again", PLAIN_TEMPLATE)
    stale, live = left_staging(out, ".merging-")
    merge_models(runs, out, method="slerp", t=0.0, log=lambda *_: None)
    assert not any(p.exists() for p in stale) and live.is_dir()
    assert (out / "merged" / "config.json").is_file()


def test_merge_models_says_what_is_wrong(runs, tmp_path):
    a, b = runs
    with pytest.raises(UserError, match="merged.*missing.*builder merge"):
        merge_models([a, tmp_path], tmp_path / "x")
    other = tmp_path / "other"
    shutil.copytree(b, other)
    tokenizer = other / "merged" / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text(encoding="utf-8").replace("<eos>", "<end>", 1),
                         encoding="utf-8")
    with pytest.raises(UserError, match="different tokenizers"):
        merge_models([a, other], tmp_path / "x")
    config = json.loads((other / "merged" / "config.json").read_text())
    (other / "merged" / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(UserError, match="different base models"):
        merge_models([a, other], tmp_path / "x")
    with pytest.raises(UserError, match="exactly two"):
        merge_models([a, b, b], tmp_path / "x", method="slerp")
    with pytest.raises(UserError, match="one weight per run"):
        merge_models([a, b], tmp_path / "x", method="linear", weights=[1.0])


def test_the_model_card_shows_the_merge_recipe(runs, tmp_path):
    from builder.deploy.cards import model_card

    out = merge_models(list(runs), tmp_path / "lin", method="linear", weights=[1.0, 0.5],
                       log=lambda *_: None)
    card = model_card(out, "merged", repo_id="tester/merged")
    assert "## Merge" in card and "merge_method: linear" in card


# Two real embedded-model runs (slow): the session's trained run, and the same run with its
# adapter at half strength (a second run that differs in every tuned weight, without training)


@pytest.mark.slow
def test_slerp_of_two_embedded_runs_is_each_at_the_ends_and_answers_between(embedded_run,
                                                                           tmp_path):
    from safetensors.torch import load_file, save_file

    from builder.training.merge import merge

    other = tmp_path / "other"
    shutil.copytree(embedded_run, other, ignore=shutil.ignore_patterns("merged", "checkpoints"))
    adapter = other / "adapter" / "adapter_model.safetensors"
    tensors = load_file(adapter)
    save_file({k: v * 0.5 if "lora_B" in k else v for k, v in tensors.items()}, adapter,
              metadata={"format": "pt"})
    merge(other, log=lambda *_: None)
    wa, wb = weights(embedded_run / "merged"), weights(other / "merged")
    tuned = [k for k in wa if "layers.3.mlp.down_proj" in k]
    assert tuned and all(not torch.equal(wa[k], wb[k]) for k in tuned)  # two different runs
    merged = {}
    for t in (0.0, 1.0, 0.5):
        out = merge_models([embedded_run, other], tmp_path / f"t{t}", method="slerp", t=t,
                           log=lambda *_: None)
        merged[t] = weights(out / "merged")
    for key in wa:
        assert torch.allclose(merged[0.0][key], wa[key], atol=1e-2), key
        assert torch.allclose(merged[1.0][key], wb[key], atol=1e-2), key
    for key in tuned:
        middle = merged[0.5][key]
        assert not torch.allclose(middle, wa[key]) and not torch.allclose(middle, wb[key]), key
    reply = load_chatbot(tmp_path / "t0.5").reply("배송비 얼마예요?", max_new_tokens=64)
    assert reply.text.strip() and not reply.declined and reply.sources, reply
