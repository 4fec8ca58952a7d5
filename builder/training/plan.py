"""Before training: how many LoRA parameters, and roughly how much memory, for a config.

    builder plan --config configs/llama3-open-ko-8b.yaml

Owns `architecture_for(model_name)` (a model's config.json without downloading: a shipped copy in
builder/architectures/ for the known names, or a local folder's own), `plan(cfg)` (the model built
on the meta device, so no weights are read or allocated; total and LoRA parameters counted from it)
and `format_plan(p)`. The memory figure is an estimate from simple formulas, not a measurement.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from builder.config import Config
from builder.errors import UserError

ARCHITECTURES_DIR = Path(__file__).parent / "architectures"
KNOWN_MODELS = {
    "beomi/Llama-3-Open-Ko-8B-Instruct-preview": "llama-3-8b",
    "beomi/Llama-3-Open-Ko-8B": "llama-3-8b",
    "meta-llama/Meta-Llama-3-8B": "llama-3-8b",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama-3-8b",
    "unsloth/llama-3-8b": "llama-3-8b",
    "unsloth/llama-3-8b-Instruct": "llama-3-8b",
    "unsloth/llama-3-8b-bnb-4bit": "llama-3-8b",
    "unsloth/llama-3-8b-Instruct-bnb-4bit": "llama-3-8b",
    "embedded:gemma-3-270m": "gemma-3-270m",
    "google/gemma-3-270m": "gemma-3-270m",
}
GIB = 1024**3
CUDA_CONTEXT_GIB = 0.5  # CUDA runtime + cuBLAS workspaces, before any tensor is allocated


def architecture_for(model_name: str) -> dict:
    """A model's config.json as a dict, never downloaded: a local folder's own or a shipped copy."""
    folder = Path(model_name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder}: no config.json in this folder, so it is not a model folder")
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    known = {name.lower(): arch for name, arch in KNOWN_MODELS.items()}  # Hub ids ignore case
    if model_name.lower() not in known:
        raise UserError(
            f"model.name = {model_name!r}: no architecture known for it. Known names: "
            f"{', '.join(KNOWN_MODELS)}; a local folder with a config.json also works"
        )
    path = ARCHITECTURES_DIR / f"{known[model_name.lower()]}.json"
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class LoraModule:
    """One adapted linear layer kind, e.g. q_proj: its shape and its LoRA parameters."""

    name: str
    in_features: int
    out_features: int
    per_layer: int  # r x (in + out): A is r x in, B is out x r
    count: int  # how many such layers the model has


@dataclass
class Plan:
    model_name: str
    architecture: dict  # model_type, layers, hidden, heads, kv_heads, intermediate, vocab
    total_params: int
    trainable_params: int
    lora_modules: list[LoraModule]
    memory_gib: dict[str, float]  # row label -> GiB, in report order
    settings: dict  # the config values the estimate used
    notes: list[str] = field(default_factory=list)

    @property
    def total_gib(self) -> float:
        return sum(self.memory_gib.values())


def plan(cfg: Config, device: str = "cuda") -> Plan:
    """Count total and LoRA parameters on the meta device and estimate peak training memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    assert device in ("cuda", "cpu"), f"device must be 'cuda' or 'cpu', got {device!r}"
    arch = dict(architecture_for(cfg.model.name))
    arch.pop("quantization_config", None)  # a pre-quantized folder: its shapes are all we need
    try:
        model_config = AutoConfig.for_model(**arch)
    except (KeyError, ValueError) as err:
        raise UserError(
            f"model.name = {cfg.model.name!r}: transformers cannot read its config.json ({err})"
        ) from None
    with torch.device("meta"):  # shapes only: no weights read, no memory allocated
        model = AutoModelForCausalLM.from_config(model_config)

    # Count parameters (tied embeddings count once, as model.parameters() yields them once)
    total = sum(p.numel() for p in model.parameters())
    output_weight = model.get_output_embeddings().weight
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    quantizable = sum(m.weight.numel() for _, m in linears if m.weight is not output_weight)

    # LoRA: what peft adds to each targeted nn.Linear, grouped by leaf name and shape
    r, groups = cfg.lora.r, {}
    for name, m in linears:
        leaf = name.rsplit(".", 1)[-1]
        if leaf in cfg.lora.target_modules:
            key = (leaf, m.in_features, m.out_features)
            groups[key] = groups.get(key, 0) + 1
    missing = sorted(set(cfg.lora.target_modules) - {leaf for leaf, _, _ in groups})
    if missing:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in linears})
        raise UserError(
            f"lora.target_modules: {missing} match no linear layer of {cfg.model.name}; "
            f"its linear layers are {names}"
        )
    lora_modules = [LoraModule(leaf, i, o, r * (i + o), n) for (leaf, i, o), n in groups.items()]
    trainable = sum(m.per_layer * m.count for m in lora_modules)

    # Memory estimate, in bytes
    c, notes = model_config, []
    layers, hidden, heads, vocab = (c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
                                    c.vocab_size)
    batch, seq = cfg.train.batch_size, cfg.model.max_seq_length
    tokens = batch * seq  # per micro-batch; grad_accum adds steps, not memory
    fp32 = device == "cpu" or cfg.model.precision == "fp32"
    dtype_bytes = 4 if fp32 else 2
    four_bit = cfg.model.load_in_4bit and device == "cuda"
    if cfg.model.load_in_4bit and not four_bit:
        notes.append("load_in_4bit is ignored on CPU (bitsandbytes 4-bit needs a GPU)")
    memory = {}
    if four_bit:
        # NF4: 0.5 byte/param in the decoder's linear layers, + ~0.5 byte per 64-param block for
        # absmax; embeddings, norms and lm_head stay 16-bit (bitsandbytes skips them)
        memory["base weights (4-bit linears, 16-bit rest)"] = (
            quantizable * (0.5 + 0.5 / 64) + (total - quantizable) * 2)
    else:
        memory[f"base weights ({'fp32' if fp32 else '16-bit'})"] = total * dtype_bytes
    memory["LoRA weights (fp32)"] = trainable * 4
    memory["LoRA gradients (fp32)"] = trainable * 4
    optimizer_bytes = 2 if cfg.train.optimizer == "adamw_8bit" else 8  # two moments, 1 or 4 B each
    memory[f"optimizer state ({cfg.train.optimizer}, {optimizer_bytes} B/param)"] = (
        trainable * optimizer_bytes)
    # Activations (Korthikanti et al. 2022): one layer keeps ~34 x hidden bytes per token with
    # 16-bit activations. Their extra 5 x heads x seq term is the stored attention scores, which
    # fused attention (SDPA, flash attention, Unsloth's kernels) never materializes: left out.
    # Checkpointing keeps only each layer's 16-bit input (2 x hidden bytes per token per layer)
    # and recomputes one layer at a time. "unsloth" offloads those inputs to CPU RAM, so for it
    # this is an upper bound. fp32 activations take twice the bytes.
    full_layer = tokens * 34 * hidden * dtype_bytes / 2
    checkpointing = cfg.train.gradient_checkpointing != "false"
    if checkpointing:
        activations = tokens * 2 * hidden * layers * dtype_bytes / 2 + full_layer
    else:
        activations = full_layer * layers
    memory[f"activations (checkpointing {cfg.train.gradient_checkpointing})"] = activations
    # fp32 logits for the loss: batch x seq x vocab x 4 B, often the largest single tensor
    memory["logits (fp32, batch x seq x vocab)"] = tokens * vocab * 4
    if device == "cuda":
        memory["CUDA context"] = CUDA_CONTEXT_GIB * GIB

    architecture = {
        "model_type": c.model_type, "layers": layers, "hidden": hidden, "heads": heads,
        "kv_heads": getattr(c, "num_key_value_heads", heads) or heads,
        "intermediate": c.intermediate_size, "vocab": vocab,
    }
    settings = {
        "device": device, "load_in_4bit": four_bit, "precision": "fp32" if fp32 else "16-bit",
        "max_seq_length": seq, "batch_size": batch, "grad_accum": cfg.train.grad_accum,
        "r": r, "alpha": cfg.lora.alpha, "optimizer": cfg.train.optimizer,
        "gradient_checkpointing": cfg.train.gradient_checkpointing,
    }
    return Plan(cfg.model.name, architecture, total, trainable, lora_modules,
                {label: b / GIB for label, b in memory.items()}, settings, notes)


def format_plan(p: Plan) -> str:
    """A readable report: architecture, parameters, LoRA per module and the memory table."""
    a, s = p.architecture, p.settings
    share = 100 * p.trainable_params / p.total_params
    lines = [
        f"model: {p.model_name}",
        f"architecture: {a['model_type']}, {a['layers']} layers, hidden {a['hidden']:,}, "
        f"{a['heads']} heads / {a['kv_heads']} kv heads, intermediate {a['intermediate']:,}, "
        f"vocab {a['vocab']:,}",
        f"total parameters: {p.total_params:,} ({p.total_params / 1e9:.2f} B)",
        f"trainable LoRA parameters: {p.trainable_params:,} ({share:.2f}% of {p.total_params:,})",
        "",
        f"LoRA r={s['r']}, alpha={s['alpha']}: r x (in + out) per layer",
    ]
    for m in p.lora_modules:
        lines.append(f"  {m.name:<12} {m.in_features:>6,} -> {m.out_features:<6,} "
                     f"{m.per_layer:>11,} x {m.count} = {m.per_layer * m.count:>12,}")
    tokens = s["batch_size"] * s["max_seq_length"]
    lines += [
        "",
        f"peak training memory on {s['device']} (an ESTIMATE, not a measurement): batch "
        f"{s['batch_size']} x seq {s['max_seq_length']:,} = {tokens:,} tokens per step "
        f"(x {s['grad_accum']} accumulation = {s['batch_size'] * s['grad_accum']} rows per "
        f"optimizer step)",
    ]
    width = max(len(label) for label in p.memory_gib)
    for label, gib in p.memory_gib.items():
        lines.append(f"  {label:<{width}}  {gib:7.2f} GiB")
    lines.append(f"  {'total':<{width}}  {p.total_gib:7.2f} GiB")
    lines += [f"note: {note}" for note in p.notes]
    return "\n".join(lines)
