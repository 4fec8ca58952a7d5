"""One-shot GPU check of the production recipe on a Llama-3-8B-shaped model with random weights.

    bash bench/gpu_check.sh WHEEL_DIR                      # on the GPU machine (see the .sh)
    .venv/bin/python bench/gpu_check.py --tiny --device cpu --work /tmp/gpu-check   # dry run

Phases, each in its own process with its own time limit inside one overall budget (Unsloth
patches transformers for the whole process, so the plain path must not share one with it):
  model    a LlamaForCausalLM of builder/training/architectures/llama-3-8b.json (or a tiny one)
           with random weights, saved once in bf16 with a byte-level BPE tokenizer trained on
           data/sample_faq.csv, so both paths load the same folder and nothing is downloaded
  unsloth  configs/llama3-open-ko-8b.yaml through builder.training.models.load_unsloth (4-bit
           QLoRA), `--steps` optimizer steps of batch_size x grad_accum synthetic rows
  hf       the same through load_hf (bitsandbytes 4-bit when installed, else 16-bit LoRA)
  merge    the trained LoRA (Unsloth's when it trained) folded into the bf16 base, saved,
           reloaded; logits compared with base + adapter; a few tokens generated
  dpo      one DPO step on two synthetic pairs with the project's prefer.py loaders and args
Each training phase reports tokens/s (real tokens, step 1 is warm-up and not timed), peak VRAM
(torch.cuda.max_memory_allocated over load and training) and MFU = 6 * N * tokens / seconds /
peak bf16 FLOP/s, N the model's parameter count (the usual dense estimate; it ignores
checkpointing's second forward and the frozen weights' skipped gradients).
The summary is written after every phase (a phase cut off still leaves the others' numbers) to
WORK/summary.json and $OUT/gpu_check.json, and printed as the last line of stdout.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "llama3-open-ko-8b.yaml"
ARCHITECTURE = ROOT / "builder" / "training" / "architectures" / "llama-3-8b.json"
PHASES = ("model", "unsloth", "hf", "merge", "dpo")
# seconds each phase may take at most on the 8B model (the overall budget may cut them)
PHASE_LIMITS = {"model": 150, "unsloth": 200, "hf": 200, "merge": 180, "dpo": 150}
# dense bf16 tensor peak, TFLOP/s, by a part of the GPU's name, the most specific first
# (SXM 989; the H200 has the H100 SXM's compute)
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"]
GIB = 1024**3


# ---------------------------------------------------------------------------------------------
# Wheels: trimmed to what a CUDA 13 run loads, so the folder fits one 64 MiB carry


def keep_member(wheel: str, member: str) -> bool:
    """Unsloth's web studio (90 MB unpacked) and bitsandbytes' libraries for other CUDA/ROCm
    versions are never loaded by a training run on torch cu130."""
    if wheel.startswith("unsloth-"):
        return not member.startswith("studio/")
    if wheel.startswith("bitsandbytes-") and member.endswith(".so"):
        return any(tag in member for tag in ("_cpu.so", "_cuda130.so", "_cuda132.so"))
    return True


def trim_wheels(folder: Path) -> None:
    for wheel in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as source:
            members = source.infolist()
            kept = [m for m in members if keep_member(wheel.name, m.filename)]
            if len(kept) == len(members):
                continue
            dropped = {m.filename for m in members} - {m.filename for m in kept}
            trimmed = wheel.with_suffix(".trim")
            with zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as target:
                for member in kept:
                    data = source.read(member)
                    if member.filename.endswith(".dist-info/RECORD"):  # list only what is kept
                        lines = data.decode().splitlines()
                        data = "\n".join(l for l in lines if l.split(",")[0] not in dropped)
                        data = (data + "\n").encode()
                    target.writestr(member, data)
        trimmed.replace(wheel)
        print(f"trimmed {wheel.name}: {len(dropped)} files dropped, "
              f"{wheel.stat().st_size / 2**20:.1f} MiB")


# ---------------------------------------------------------------------------------------------
# Shared pieces of the phases


def production_config(base_dir: Path, load_in_4bit: bool | None = None):
    from builder.config import load_config

    cfg = load_config(CONFIG, [f"model.name={base_dir}"])
    if load_in_4bit is not None:
        cfg.model.load_in_4bit = load_in_4bit
    return cfg


def synthetic_batches(count: int, batch_size: int, lengths: tuple[int, int], vocab: int,
                      pad_id: int, seed: int) -> list[dict]:
    """Rows of random token ids, each row as long as an FAQ row (a length drawn from
    `lengths`), padded to the longest in its batch as the recipe does (padding_free: false)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        sizes = torch.randint(lengths[0], lengths[1] + 1, (batch_size,), generator=generator)
        longest = int(sizes.max())
        ids = torch.randint(len(SPECIAL_TOKENS), vocab, (batch_size, longest), generator=generator)
        mask = torch.arange(longest)[None, :] < sizes[:, None]
        ids = ids.masked_fill(~mask, pad_id)
        batches.append({"input_ids": ids, "attention_mask": mask.long(),
                        "labels": ids.masked_fill(~mask, -100)})
    return batches


def make_optimizer(params, cfg, on_cuda: bool):
    """The recipe's adamw_8bit where bitsandbytes runs (CUDA), else torch's AdamW."""
    import importlib.util

    import torch

    if on_cuda and importlib.util.find_spec("bitsandbytes"):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay), \
            "adamw_8bit"
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay), \
        "adamw_torch"


def train_steps(model, cfg, args, device: str) -> dict:
    """`args.steps` optimizer steps of batch_size x grad_accum rows; step 1 is warm-up."""
    import torch

    t = cfg.train
    on_cuda = device == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, optimizer_name = make_optimizer(params, cfg, on_cuda)
    batches = synthetic_batches(args.steps * t.grad_accum, t.batch_size, args.lengths,
                                model.config.vocab_size, SPECIAL_TOKENS.index("<|pad|>"), t.seed)
    model.train()
    losses, tokens, started = [], 0, None
    for step in range(args.steps):
        if step == 1:  # kernels compiled and autotuned: time from here
            if on_cuda:
                torch.cuda.synchronize()
            started, tokens = time.perf_counter(), 0
        step_loss = 0.0
        for batch in batches[step * t.grad_accum:(step + 1) * t.grad_accum]:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss / t.grad_accum  # 2 x 4 accumulation = 8 rows a step
            loss.backward()
            step_loss += float(loss.detach())
            tokens += int(batch["attention_mask"].sum())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(step_loss, 4))
    if on_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"steps": args.steps, "rows_per_step": t.batch_size * t.grad_accum,
            "timed_tokens": tokens, "train_s": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "losses": losses,
            "optimizer": optimizer_name, "trainable_params": sum(p.numel() for p in params)}


def memory_figures(result: dict, device: str, n_params: int, peak_tflops: float | None) -> dict:
    import resource

    import torch

    on_cuda = device == "cuda"
    result["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2) if on_cuda else None
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    flops = 6 * n_params * result["tokens_per_s"]
    result["mfu"] = round(flops / (peak_tflops * 1e12), 4) if peak_tflops else None
    return result


def read_model_record(work: Path) -> dict:
    return json.loads((work / "model.json").read_text())


# ---------------------------------------------------------------------------------------------
# Phases (each runs in its own process and returns its part of the summary)


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer learnt from the sample FAQ: Korean text tokenizes, nothing is
    downloaded. Its ids stay below the model's vocab; the special tokens come first."""
    import csv

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    with open(ROOT / "data" / "sample_faq.csv", encoding="utf-8") as f:
        texts = [" ".join(row.values()) for row in csv.DictReader(f)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>", pad_token="<|pad|>")


def phase_model(args, work: Path, device: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    arch = json.loads(ARCHITECTURE.read_text())
    if args.tiny:
        arch.update(TINY)
    tokenizer = build_tokenizer(min(arch["vocab_size"], 2000))
    arch.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, torch_dtype="bfloat16")
    config = LlamaConfig(**{k: v for k, v in arch.items() if k != "architectures"})
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    base_dir = work / "base"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    size = sum(f.stat().st_size for f in base_dir.iterdir())
    record = {"status": "ok", "params": n_params, "layers": config.num_hidden_layers,
              "hidden": config.hidden_size, "vocab": config.vocab_size,
              "tokenizer_vocab": len(tokenizer), "pad_id": tokenizer.pad_token_id,
              "base_gib": round(size / GIB, 2),
              "build_s": round(time.perf_counter() - started, 1), "base_dir": str(base_dir)}
    (work / "model.json").write_text(json.dumps(record))
    return record


def phase_unsloth(args, work: Path, device: str) -> dict:
    import torch
    import unsloth  # before transformers and trl, as the project's loader needs

    from builder.training.models import load_unsloth

    record = read_model_record(work)
    cfg = production_config(Path(record["base_dir"]))
    started = time.perf_counter()
    model, tokenizer = load_unsloth(cfg, record["base_dir"])
    result = {"status": "ok", "quantization": "4-bit nf4 (unsloth)" if cfg.model.load_in_4bit
              else "bf16", "load_s": round(time.perf_counter() - started, 1)}
    result.update(train_steps(model, cfg, args, device))
    model.save_pretrained(work / "adapter-unsloth")
    tokenizer.save_pretrained(work / "adapter-unsloth")
    result["versions"] = {"unsloth": unsloth.__version__, "torch": torch.__version__}
    return memory_figures(result, device, record["params"], args.peak_tflops)


def phase_hf(args, work: Path, device: str) -> dict:
    import importlib.util

    from builder.training.models import load_hf

    record = read_model_record(work)
    four_bit = device == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
    cfg = production_config(Path(record["base_dir"]), load_in_4bit=four_bit)
    started = time.perf_counter()
    model, tokenizer = load_hf(cfg, record["base_dir"])
    if not four_bit and cfg.train.gradient_checkpointing != "false":
        # prepare_model_for_kbit_training turns it on for 4-bit; the trainer does for 16-bit
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    precision = "bf16" if device == "cuda" else "fp32"
    result = {"status": "ok", "quantization": "4-bit nf4 (bitsandbytes)" if four_bit
              else f"none ({precision} LoRA)", "load_s": round(time.perf_counter() - started, 1)}
    result.update(train_steps(model, cfg, args, device))
    model.save_pretrained(work / "adapter-hf")
    tokenizer.save_pretrained(work / "adapter-hf")
    return memory_figures(result, device, record["params"], args.peak_tflops)


def trained_adapter(work: Path) -> Path | None:
    """The production path's adapter (Unsloth) when it trained, else the plain one."""
    for name in ("adapter-unsloth", "adapter-hf"):
        if (work / name / "adapter_config.json").is_file():
            return work / name
    return None


def phase_merge(args, work: Path, device: str) -> dict:
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = read_model_record(work)
    adapter_dir = trained_adapter(work)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # bf16 math on CPU is slow
    placement = {"device_map": {"": 0}} if device == "cuda" else {}
    started = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(record["base_dir"], dtype=dtype, **placement)
    probe = torch.randint(len(SPECIAL_TOKENS), record["tokenizer_vocab"], (1, 24),
                          generator=torch.Generator().manual_seed(1)).to(device)
    model = PeftModel.from_pretrained(base, adapter_dir)
    with torch.no_grad():
        adapted = model(probe).logits.float()
        with model.disable_adapter():
            plain = model(probe).logits.float()
    merged = model.merge_and_unload()
    merged_dir = work / "merged"
    merged.to(torch.bfloat16).save_pretrained(merged_dir)  # 16-bit, as builder merge saves
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(merged_dir)
    size = sum(f.stat().st_size for f in merged_dir.iterdir())
    del model, merged, base
    reloaded = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=dtype, **placement)
    with torch.no_grad():
        merged_logits = reloaded(probe).logits.float()
        generated = reloaded.generate(probe[:, :8], max_new_tokens=8, do_sample=False,
                                      pad_token_id=record["pad_id"])
    new_ids = generated[0, 8:].tolist()
    if not args.keep:
        shutil.rmtree(merged_dir)  # a whole 8B model: the disk is needed by what comes next
    return {"status": "ok", "adapter": adapter_dir.name, "merged_gib": round(size / GIB, 2),
            "adapter_effect": round(float((adapted - plain).abs().max()), 5),
            "merged_vs_adapter_max_diff": round(float((merged_logits - adapted).abs().max()), 5),
            "logit_scale": round(float(adapted.abs().max()), 3),
            "generated_ids": new_ids, "merge_s": round(time.perf_counter() - started, 1)}


def phase_dpo(args, work: Path, device: str) -> dict:
    import importlib.util

    on_cuda = device == "cuda"
    backend = "unsloth" if on_cuda and importlib.util.find_spec("unsloth") else "hf"
    if backend == "unsloth":
        import unsloth  # noqa: F401  (before trl)
    from datasets import Dataset

    from builder.training.models import precision, torch_dtype
    from builder.training.prefer import (
        load_policy_hf,
        load_policy_unsloth,
        random_dataset_fingerprints,
        trainer_args,
        trainer_classes,
    )

    record = read_model_record(work)
    adapter_dir = work / f"adapter-{backend}"
    if not (adapter_dir / "adapter_config.json").is_file():
        adapter_dir = trained_adapter(work)
    four_bit = on_cuda and importlib.util.find_spec("bitsandbytes") is not None
    cfg = production_config(Path(record["base_dir"]), load_in_4bit=four_bit)
    cfg.prefer.max_steps, cfg.prefer.batch_size, cfg.prefer.grad_accum = 1, 2, 1
    prec = precision(cfg, on_cuda)
    started = time.perf_counter()
    if backend == "unsloth":
        model, tokenizer = load_policy_unsloth(cfg, adapter_dir, torch_dtype(prec))
    else:
        model, tokenizer = load_policy_hf({"base_model_path": record["base_dir"]}, adapter_dir,
                                          torch_dtype(prec))
    # prompts end on a newline, a token boundary: the answer's first token starts fresh
    pairs = {"prompt": ["### 질문: 배송비는 얼마인가요?\n### 답변:\n",
                        "### 질문: 환불은 언제 되나요?\n### 답변:\n"],
             "chosen": ["기본 배송비는 3,000원이에요.", "반품 확인 후 3영업일 안에 환불돼요."],
             "rejected": ["잘 모르겠어요.", "환불은 되지 않습니다."]}
    trainer_class, config_class = trainer_classes("dpo")
    dpo_args = trainer_args(config_class, cfg, work / "dpo", prec, on_cuda, 2, False)
    with random_dataset_fingerprints():
        trainer = trainer_class(model=model, args=dpo_args, train_dataset=Dataset.from_dict(pairs),
                                processing_class=tokenizer)
    result = trainer.train()
    return {"status": "ok", "backend": backend, "adapter": adapter_dir.name,
            "steps": trainer.state.global_step, "loss": round(result.training_loss, 5),
            "dpo_s": round(time.perf_counter() - started, 1)}


RUNNERS = {"model": phase_model, "unsloth": phase_unsloth, "hf": phase_hf, "merge": phase_merge,
           "dpo": phase_dpo}


# ---------------------------------------------------------------------------------------------
# The check: each phase in a child process, the summary after each


def skip_reason(phase: str, device: str, work: Path, summary: dict) -> str | None:
    """Why a phase cannot run here, or None."""
    import importlib.util

    if phase != "model" and summary["phases"].get("model", {}).get("status") != "ok":
        return "skipped: no base model (the model phase did not finish)"
    if phase == "unsloth":
        if device != "cuda":
            return "skipped: needs CUDA"
        if importlib.util.find_spec("unsloth") is None:
            return "skipped: unsloth is not installed (carry its wheels: gpu_check.sh --pack)"
    if phase == "merge" and trained_adapter(work) is None:
        return "skipped: no trained adapter (both training phases failed)"
    if phase == "dpo":
        if importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None:
            return "skipped: trl or datasets is not installed"
        if trained_adapter(work) is None:
            return "skipped: no trained adapter (both training phases failed)"
    return None


def run_phase(phase: str, args, device: str, limit: float) -> dict:
    """Run one phase in a child process; its result, or why there is none."""
    result_file = args.work / f"{phase}.result.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--phase", phase, "--device", device,
               "--work", str(args.work), "--steps", str(args.steps),
               "--lengths", f"{args.lengths[0]}:{args.lengths[1]}"]
    command += ["--tiny"] if args.tiny else []
    command += ["--keep"] if args.keep else []
    command += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    started = time.perf_counter()
    try:
        code = subprocess.run(command, check=False, timeout=limit).returncode
    except subprocess.TimeoutExpired:
        return {"status": f"timeout: cut off after {limit:.0f} s"}
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    else:
        result = {"status": f"failed: the process ended with code {code} and no result"}
    result["phase_s"] = round(time.perf_counter() - started, 1)
    return result


def device_facts(device: str) -> dict:
    import torch

    if device != "cuda":
        return {"device": "cpu", "gpu_peak_bf16_tflops": None}
    name = torch.cuda.get_device_name(0)
    peak = next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)
    return {"device": name, "gpu_peak_bf16_tflops": peak,
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)}


def recipe_settings() -> dict:
    cfg = production_config(Path("unused"))
    return {"config": str(CONFIG.relative_to(ROOT)), "load_in_4bit": cfg.model.load_in_4bit,
            "max_seq_length": cfg.model.max_seq_length, "lora_r": cfg.lora.r,
            "lora_alpha": cfg.lora.alpha, "target_modules": cfg.lora.target_modules,
            "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum,
            "optimizer": cfg.train.optimizer,
            "gradient_checkpointing": cfg.train.gradient_checkpointing}


def clear_work(work: Path) -> None:
    """An earlier run's adapters and results must not stand in for this run's."""
    import shutil

    for name in ("adapter-unsloth", "adapter-hf", "merged", "dpo", "model.json", "summary.json",
                 *(f"{phase}.result.json" for phase in PHASES)):
        path = work / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def write_summary(summary: dict, work: Path) -> None:
    text = json.dumps(summary, ensure_ascii=False)
    (work / "summary.json").write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "gpu_check.json").write_text(text)


def check(args) -> dict:
    import torch

    from builder.training.sft import library_versions

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda, but torch sees no CUDA GPU")
    facts = device_facts(device)
    if args.peak_tflops is None:
        args.peak_tflops = facts["gpu_peak_bf16_tflops"]
    args.work.mkdir(parents=True, exist_ok=True)
    clear_work(args.work)
    started = time.perf_counter()
    summary = {**facts, "peak_tflops_used": args.peak_tflops, "tiny": args.tiny,
               "steps": args.steps, "row_tokens": list(args.lengths),
               "recipe": recipe_settings(), "versions": library_versions(), "phases": {}}
    for phase in PHASES:
        left = args.budget_s - (time.perf_counter() - started)
        reason = skip_reason(phase, device, args.work, summary)
        if reason is None and left < 20:
            reason = f"skipped: out of time ({args.budget_s:.0f} s budget spent)"
        if reason:
            summary["phases"][phase] = {"status": reason}
        else:
            print(f"=== gpu_check: {phase} (at most {min(PHASE_LIMITS[phase], left):.0f} s) ===",
                  flush=True)
            summary["phases"][phase] = run_phase(phase, args, device,
                                                 min(PHASE_LIMITS[phase], left))
        print(f"gpu_check: {phase}: {summary['phases'][phase]['status']}", flush=True)
        summary["wall_s"] = round(time.perf_counter() - started, 1)
        write_summary(summary, args.work)
    return summary


def run_child(args) -> None:
    """One phase in this process; writes WORK/PHASE.result.json, also when it fails."""
    import traceback

    try:
        result = RUNNERS[args.phase](args, args.work, args.device)
    except Exception as err:  # noqa: BLE001  (every failure is reported; the next phase runs)
        traceback.print_exc()
        result = {"status": f"failed: {type(err).__name__}: {str(err)[:300]}"}
    (args.work / f"{args.phase}.result.json").write_text(json.dumps(result, ensure_ascii=False))


def parse_lengths(text: str) -> tuple[int, int]:
    low, high = (int(x) for x in text.split(":"))
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"--lengths {text}: want MIN:MAX with 0 < MIN <= MAX")
    return low, high


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny Llama (hidden 64, 2 layers, vocab 1000), not the 8B shape")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per path (>= 2)")
    # Llama-3 tokens of an alpaca-template row with a Korean FAQ question and answer (estimate)
    parser.add_argument("--lengths", type=parse_lengths, default=(192, 448),
                        help="MIN:MAX tokens of a synthetic row")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"),
                        help="folder for the base model, adapters and results (~17 GB for 8B)")
    parser.add_argument("--budget-s", type=float, default=540,
                        help="all phases together stop after this many seconds")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak bf16 TFLOP/s for MFU (default: from the GPU's name)")
    parser.add_argument("--keep", action="store_true", help="keep the merged model")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--trim-wheels", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trim_wheels:
        return trim_wheels(args.trim_wheels)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (step 1 is warm-up, not timed)")
    if args.phase:
        return run_child(args)
    summary = check(args)
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return summary


if __name__ == "__main__":
    main()
