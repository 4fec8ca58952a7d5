"""Load a base model for training: Unsloth on CUDA, plain transformers + peft elsewhere.

Two small functions, one per backend, with the same inputs and the same result: a PEFT model
with LoRA adapters on `cfg.lora.target_modules`, and its tokenizer. On the Unsloth path
`unsloth` is imported before transformers/trl, as it must be.
"""

import importlib.util
from pathlib import Path

from builder.answering.engines.transformers import load_tokenizer  # noqa: F401 (shared)
from builder.config import Config
from builder.embedded import EMBEDDED_MODEL, ensure_embedded_model
from builder.errors import UserError

# Every end token a template can end on, by the token's text; only those in the vocab are used.
END_TOKENS = ("<eos>", "<end_of_turn>", "<|end_of_text|>", "<|eot_id|>", "</s>", "<|im_end|>")


# What a tokenizer folder holds; a tokenizer is loaded once per process for each content of these
def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pick_backend(cfg: Config) -> str:
    """'unsloth' on CUDA with unsloth installed, else 'hf'; train.backend forces one."""
    wanted = cfg.train.backend
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if wanted == "unsloth":
        if not has_unsloth:
            raise UserError("train.backend=unsloth but unsloth is not installed: pip install '.[gpu]'")
        if not cuda_available():
            raise UserError("train.backend=unsloth needs a CUDA GPU; use --set train.backend=hf on CPU")
        return "unsloth"
    if wanted == "hf":
        return "hf"
    return "unsloth" if has_unsloth and cuda_available() else "hf"


def resolve_base_model(name: str, log=print) -> str:
    """The embedded model's cached folder, a local folder, or a Hub id already in the local cache."""
    if name == EMBEDDED_MODEL:
        return str(ensure_embedded_model(log=log))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: a model folder needs a config.json (and weights, tokenizer)")
        return str(path.resolve())
    if name.count("/") != 1:
        raise UserError(
            f"unknown model {name!r}: use {EMBEDDED_MODEL!r}, a local model folder, or a Hub id OWNER/NAME"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as err:  # offline, gated, not found: all need the same advice
        raise UserError(
            f"cannot get model {name!r} ({type(err).__name__}). Without network access use "
            f"{EMBEDDED_MODEL!r} or a local folder (model.name=/path/to/model)."
        ) from None


def precision(cfg: Config, on_cuda: bool) -> str:
    """fp32 on CPU (bf16 there is 2.5x slower); bf16 where the GPU supports it, else fp16."""
    import torch

    if cfg.model.precision != "auto":
        return cfg.model.precision
    if not on_cuda:
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_unsloth(cfg: Config, model_path: str):
    import unsloth  # noqa: F401  (patches transformers/trl; must come first)
    from unsloth import FastLanguageModel

    on_cuda = True
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_path,
        max_seq_length=cfg.model.max_seq_length,
        dtype=torch_dtype(precision(cfg, on_cuda)),
        load_in_4bit=cfg.model.load_in_4bit,
    )
    checkpointing = {"unsloth": "unsloth", "true": True, "false": False}[
        cfg.train.gradient_checkpointing
    ]
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
        use_gradient_checkpointing=checkpointing,
        random_state=cfg.train.seed,
    )
    return model, tokenizer


def load_hf(cfg: Config, model_path: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    on_cuda = torch.cuda.is_available()
    kwargs = {"dtype": torch_dtype(precision(cfg, on_cuda))}
    if cfg.model.load_in_4bit:
        if not on_cuda:
            raise UserError("model.load_in_4bit (QLoRA) needs a CUDA GPU; set it to false on CPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
    if on_cuda:
        kwargs["device_map"] = {"": 0}
    torch.manual_seed(cfg.train.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    tokenizer = load_tokenizer(model_path)
    if cfg.model.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing != "false"
        )
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.lora.target_modules if m not in present]
    if missing:
        raise UserError(
            f"lora.target_modules {missing} are not layers of {model_path}; "
            f"e.g. {sorted(n for n in present if n.endswith('proj'))}"
        )
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), tokenizer


def end_token_ids(tokenizer, extra=()) -> list[int]:
    """The tokenizer's EOS plus every known end token that is a special token of this tokenizer
    (gemma's vocab has an ordinary `</s>` text piece, which must not end an answer)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    special = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ids += [special[t] for t in END_TOKENS if t in special]
    ids += list(extra)
    return sorted(set(ids), key=ids.index)
