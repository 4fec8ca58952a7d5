"""Shared builders for the training tests: a tiny random gemma3 folder and small prepared dirs."""

import csv
import shutil
from pathlib import Path

# The Korean template without its {faq} slot: a run that answers without retrieval
PLAIN_TEMPLATE = """name: korean-plain
prompt: |
  ### 질문:
  {instruction}

  ### 답변:
prompt_with_input: |
  ### 질문:
  {instruction}

  ### 참고:
  {input}

  ### 답변:
stop_markers: ["### 질문", "### 참고", "### 답변"]
"""
SAMPLE = Path(__file__).parents[1] / "data" / "sample_faq.csv"


def sample_rows(n: int) -> list[dict]:
    with SAMPLE.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))[:n]


def make_prepared(tmp: Path, n_rows: int, name: str = "data") -> Path:
    from builder.data import prepare

    faq = tmp / f"{name}.csv"
    with faq.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(sample_rows(n_rows))
    prepare(faq, tmp / name, test_size=0.1, seed=1)
    return tmp / name


def make_tiny_gemma(folder: Path) -> Path:
    """A 2-layer random Gemma3 with the embedded model's real tokenizer (same family, ~9M params)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from builder.embedded import ensure_embedded_model

    embedded = ensure_embedded_model()
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=262144, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=64,
        max_position_embeddings=1024, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )
    Gemma3ForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded / name, folder / name)
    return folder
