"""The training stage: LoRA/QLoRA supervised fine-tuning on a prepared FAQ folder.

    builder train runs/data --out runs/demo --config configs/embedded-cpu.yaml
    builder inspect runs/data --config configs/embedded-cpu.yaml

Each row becomes `template prompt + answer + EOS`; only the answer and EOS carry labels. A
validation split is carved from train, evaluated every `eval_steps`, early stopping watches it
and the best checkpoint is restored at the end. The run folder gets `adapter/`, `loss.png`,
`metrics.json`, `config.yaml`, `meta.json`, `template.yaml` and `checkpoints/`.
Backends: Unsloth on CUDA, transformers + peft + trl elsewhere (builder.training.models).
"""

import hashlib
import json
import shutil
import time
from importlib import metadata
from pathlib import Path

from builder.config import Config, config_from_dict
from builder.errors import UserError
from builder.prompts import load_template
from builder.run import Run, adapter_problem, staging_dir, write_atomic
from builder.training.rows import (
    IGNORE,
    count_kinds,
    build_knowledge,
    grounded_splits,
    load_prepared,
    split_validation,
    tokenize_split,
)

# what a training run (and the stages after it) write into the run folder
RUN_OUTPUTS = ("adapter", "checkpoints", "merged", "eval", "knowledge", "metrics.json",
               "loss.png", "progress.json", "STOP")


# ---------------------------------------------------------------------------------------------
# Data: rows -> token ids with a loss mask


# ---------------------------------------------------------------------------------------------
# Trainer pieces


def make_trainer_class(base_class, answer_only_logits: bool):
    """SFTTrainer that counts trained answer tokens and (on request) scores only answer positions.

    The LM head of gemma-3-270m (640 x 262,144) is most of a token's forward work; prompt
    positions carry no labels, so projecting only the answer positions gives the same loss for a
    fraction of the compute. TRL does this itself on CUDA, but scores every position on CPU.
    """
    import torch
    import torch.nn.functional as F

    class FaqTrainer(base_class):
        answer_tokens_trained = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            if model.training:
                self.answer_tokens_trained += int((labels[:, 1:] != IGNORE).sum())
            if not answer_only_logits:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
            forward = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
            hidden = causal_lm.model(**forward, use_cache=False).last_hidden_state[:, :-1]
            targets = labels[:, 1:]
            mask = targets != IGNORE
            logits = causal_lm.lm_head(hidden[mask]).float()
            softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            total = F.cross_entropy(logits, targets[mask], reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else mask.sum()
            loss = total / torch.as_tensor(count, device=total.device).clamp(min=1)
            return (loss, {"loss": loss}) if return_outputs else loss

    return FaqTrainer


def make_progress_callback(run_dir: Path):
    """Writes progress.json and redraws loss.png on each log, for the app's live view."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            progress = {"step": state.global_step, "max_steps": state.max_steps,
                        "epoch": state.epoch, "log_history": state.log_history}
            write_atomic(run_dir / "progress.json", json.dumps(progress))  # the page reads it
            if logs and "eval_loss" in logs:
                plot_loss(state.log_history, run_dir / "loss.png")

        def on_evaluate(self, args, state, control, **kwargs):
            if (run_dir / "STOP").exists():  # the app's stop button
                control.should_training_stop = True

        def on_step_end(self, args, state, control, **kwargs):
            if (run_dir / "STOP").exists():
                control.should_training_stop = True

    return Progress()


def plot_loss(log_history: list[dict], path: Path, best_step: int | None = None) -> None:
    """The training and validation loss as a PNG, written whole (a temp file beside it, then
    renamed). Drawn with matplotlib's object API, not pyplot, whose global state is not safe
    from the several threads the page draws in."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange")
    if best_step is not None:
        ax.axvline(best_step, color="gray", linestyle="--", label=f"best step {best_step}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (answer tokens)")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_atomic(Path(path), png.getvalue(), mode=0o644)


def library_versions() -> dict:
    names = ["torch", "transformers", "peft", "trl", "datasets", "accelerate", "unsloth", "bitsandbytes"]
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def save_adapter(model, tokenizer, run_dir: Path, **options) -> Path:
    """Write RUN/adapter/ (the LoRA weights, their config, the tokenizer) whole or not at all:
    saved into a staging folder beside it, checked, then renamed into place, so a kill while
    saving leaves the adapter saved before (or none), never half of one that merge would take.
    `options` go to the model's save_pretrained."""
    from builder.data.prepare import replace_dir

    staging = staging_dir(run_dir, ".adapter-")  # and a killed save's go
    try:
        model.save_pretrained(staging, **options)
        tokenizer.save_pretrained(staging)
        problem = adapter_problem(staging)
        if problem:
            raise UserError(f"saving the adapter failed ({problem}); check the free space in "
                            f"{run_dir} and train again")
        replace_dir(staging, run_dir / "adapter")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return run_dir / "adapter"


def file_sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# The stage


def sft_config(cfg: Config, run_dir: Path, prec: str, backend: str, on_cuda: bool):
    from trl import SFTConfig

    t = cfg.train
    # eval and save on the same steps: the best checkpoint must exist to be restored
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        optim=t.optimizer,
        bf16=prec == "bf16",
        fp16=prec == "fp16",
        # Unsloth runs its own (offloaded) checkpointing, set on the model
        gradient_checkpointing=t.gradient_checkpointing == "true"
        or (backend == "hf" and t.gradient_checkpointing == "unsloth"),
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=t.logging_steps,
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        completion_only_loss=True,
        packing=t.packing,
        padding_free=t.padding_free,
        # padding-free without packing does not enforce max_length; rows are cut in tokenize_row
        max_length=None if t.padding_free else cfg.model.max_seq_length,
        dataset_num_proc=None,
        use_cpu=not on_cuda,
        save_only_model=False,
    )


def check_run_dir(run_dir: Path, resume: bool, log=print) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a folder; choose another --out")
    has_checkpoint = bool(list((run_dir / "checkpoints").glob("checkpoint-*")))
    if resume:
        if not has_checkpoint:
            raise UserError(f"{run_dir}: nothing to resume (no checkpoints/checkpoint-*); run without --resume")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / "config.yaml").exists():
            raise UserError(f"{run_dir} exists and is not a run folder; choose another --out")
        if not (run_dir / "adapter").exists():
            if has_checkpoint:
                raise UserError(f"{run_dir} holds an unfinished run: continue it with --resume, "
                                "or delete the folder")
            # it died before its first checkpoint: nothing in it can be resumed or kept
            log(f"{run_dir} holds a run that stopped before its first checkpoint: starting it over")
        # trained again: nothing of the old run may mix with the new
        for name in RUN_OUTPUTS:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def train(prepared_dir, run_dir, cfg: Config, *, resume: bool = False, log=print,
          callbacks=()) -> Path:
    """Fine-tune cfg.model on a prepared folder; returns the run folder."""
    from builder.training.models import (
        cuda_available,
        end_token_ids,
        load_hf,
        load_unsloth,
        pick_backend,
        precision,
        resolve_base_model,
    )

    prepared_dir, run_dir = Path(prepared_dir), Path(run_dir)
    dataset = load_prepared(prepared_dir)
    check_run_dir(run_dir, resume, log)
    if resume:  # a resumed run continues with the config it started with
        cfg = config_from_dict(json.loads((run_dir / "meta.json").read_text())["config"])
    backend = pick_backend(cfg)
    if backend == "unsloth":
        import unsloth  # noqa: F401 (patches transformers/trl: before anything imports them)
    template = load_template(cfg.train.template)

    # The knowledge, the config and the template first: with them the run already answers
    # from its FAQ (the FAQ entry's own answer, labelled) while the model loads and trains
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "STOP").unlink(missing_ok=True)
    run = Run(run_dir)
    run.write_config(cfg)
    run.write_template(template)
    knowledge = None
    if template.grounded:
        knowledge = build_knowledge(prepared_dir, run_dir, cfg, reuse=resume, log=log)
        log(f"{run_dir} answers from its FAQ now (`builder ask {run_dir} QUESTION`, the page, "
            "`builder serve`); the trained model takes over when it is ready")

    # Load model (Unsloth's import must precede trl's)
    model_path = resolve_base_model(cfg.model.name, log=log)
    log(f"loading {cfg.model.name} with the {backend} backend ...")
    model, tokenizer = (load_unsloth if backend == "unsloth" else load_hf)(cfg, model_path)
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    on_cuda = cuda_available()
    prec = precision(cfg, on_cuda)
    answer_only = cfg.train.answer_only_logits and backend == "hf"

    # Datasets: with a grounded template every row carries the FAQ entries retrieved for it
    train_rows, val_rows = split_validation(dataset["train"], cfg)
    if knowledge is not None:
        train_rows, val_rows = grounded_splits(train_rows, val_rows, knowledge, template, cfg,
                                               prepared_dir, log=log)
    eos_id = tokenizer.eos_token_id
    train_set = tokenize_split(train_rows, tokenizer, template, cfg, eos_id)
    val_set = tokenize_split(val_rows, tokenizer, template, cfg, eos_id)

    # Record what this run uses before training, so a killed run can be resumed and audited
    meta = {
        "base_model": cfg.model.name,
        "base_model_path": model_path,
        "backend": backend,
        "precision": prec,
        "answer_only_logits": answer_only,
        "template": template.name,
        "template_sha256": template.sha256,
        "data_dir": str(prepared_dir.resolve()),
        "data_sha256": file_sha256(prepared_dir / "train.csv", prepared_dir / "test.csv"),
        "rows": {"train": len(train_rows), "validation": len(val_rows), "test": len(dataset["test"])},
        "end_token_ids": end_token_ids(tokenizer),
        "knowledge": None if knowledge is None else {
            "entries": len(knowledge.entries), "embedder": knowledge.settings["embedder"],
            "gate": knowledge.settings["gate"], "k": cfg.rag.k,
            "row_kinds": {split: count_kinds(rows) for split, rows in
                          (("train", train_rows), ("validation", val_rows))}},
        "seed": cfg.train.seed,
        "versions": library_versions(),
        "config": cfg.to_dict(),
    }
    run.write_meta(meta)

    # Train
    trainer_class = make_trainer_class(SFTTrainer, answer_only)
    trainer = trainer_class(
        model=model,
        args=sft_config(cfg, run_dir, prec, backend, on_cuda),
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        callbacks=[
            EarlyStoppingCallback(cfg.train.early_stopping_patience, cfg.train.early_stopping_threshold),
            make_progress_callback(run_dir),
            *callbacks,
        ],
    )
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    wall = time.perf_counter() - started

    # Save the adapter (the best checkpoint was restored) and the record of the run
    state = trainer.state
    save_adapter(trainer.model, tokenizer, run_dir)
    best_step = int(state.best_model_checkpoint.rsplit("-", 1)[-1]) if state.best_model_checkpoint else None
    evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    stopped_by_user = (run_dir / "STOP").exists()
    metrics = {
        # false: stopped before the first evaluation; adapter/ holds the last, unvalidated weights
        "adapter_evaluated": bool(evals),
        "best_step": best_step,
        "best_eval_loss": state.best_metric,
        "first_eval_loss": evals[0] if evals else None,
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "stopped_early": state.global_step < state.max_steps and not stopped_by_user,
        "stopped_by_user": stopped_by_user,
        "resumed": resume,
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "answer_tokens_trained": trainer.answer_tokens_trained,
        "wall_time_s": round(wall, 1),
        "answer_tokens_per_s": round(trainer.answer_tokens_trained / wall, 2) if wall else None,
        "train_loss": result.training_loss,
        "log_history": state.log_history,
    }
    write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    plot_loss(state.log_history, run_dir / "loss.png", best_step)
    if evals:
        outcome = f"best validation loss {state.best_metric:.4f} at step {best_step}"
    else:
        outcome = "stopped before the first evaluation: the saved adapter was never validated"
    log(
        f"done in {wall:.0f} s: {state.global_step} steps, {outcome}"
        + (" (stopped early)" if metrics["stopped_early"] else "")
        + f" -> {run_dir / 'adapter'}"
    )
    return run_dir

