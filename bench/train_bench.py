"""Speed goal of the training stage: >= 2x answer tokens per second over the original recipe.

    .venv/bin/python bench/train_bench.py [--steps 40] [--eval-steps 5]

On the sample FAQ, in one process on this machine, trains the embedded gemma-3-270m twice:
  recipe   the original notebook's settings: English Alpaca template, padding to the longest
           row in the batch, batch 2 x accumulation 4, no packing, lr 2e-4, LM head on every
           position (what TRL does on CPU)
  project  configs/embedded-cpu.yaml: short Korean template, padding-free batches, LM head only
           at answer positions, batch 8, lr 1e-3
Both see 8 rows per optimizer step, the same validation rows, loss on answer tokens only (so the
validation losses compare), the same number of steps and evaluations. Reports answer tokens
trained per second (of training time, evaluations excluded) and the wall time (evaluations
included) until the validation loss first reaches a target both runs reach.
Writes bench/results/train_bench.json.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 2.0

VARIANTS = {
    "recipe": [
        "train.template=alpaca", "train.padding_free=false", "train.answer_only_logits=false",
        "train.batch_size=2", "train.grad_accum=4", "train.lr=2e-4",
    ],
    "project": [],
}


def make_clock():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """Wall time at each evaluation, and time spent evaluating (to exclude it)."""

        def __init__(self):
            self.started = None
            self.evals = []  # (step, eval_loss, wall seconds since start)
            self.eval_seconds = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            now = time.perf_counter()
            self.eval_seconds += metrics.get("eval_runtime", 0.0)
            self.evals.append((state.global_step, metrics["eval_loss"], now - self.started))

    return Clock()


def run_variant(name: str, prepared: Path, out: Path, steps: int, eval_steps: int) -> dict:
    from builder.config import load_config
    from builder.training.sft import train

    sets = VARIANTS[name] + [
        f"train.max_steps={steps}", f"train.eval_steps={eval_steps}",
        "train.early_stopping_patience=1000", "train.save_total_limit=1",
    ]
    cfg = load_config(ROOT / "configs" / "embedded-cpu.yaml", sets)
    clock = make_clock()
    started = time.perf_counter()
    run = train(prepared, out / name, cfg, log=print, callbacks=[clock])
    wall = time.perf_counter() - started
    metrics = json.loads((run / "metrics.json").read_text())
    train_seconds = metrics["wall_time_s"] - clock.eval_seconds
    return {
        "settings": sets,
        "answer_tokens_trained": metrics["answer_tokens_trained"],
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(clock.eval_seconds, 1),
        "answer_tokens_per_s": round(metrics["answer_tokens_trained"] / train_seconds, 2),
        "evals": clock.evals,
        "best_eval_loss": metrics["best_eval_loss"],
        "wall_s_incl_load": round(wall, 1),
    }


def time_to_reach(evals: list, target: float) -> float | None:
    return next((round(t, 1) for _, loss, t in evals if loss <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per variant")
    parser.add_argument("--eval-steps", type=int, default=5)
    args = parser.parse_args()

    from builder.data.prepare import prepare

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare(ROOT / "data" / "sample_faq.csv", tmp / "data")
        for name in VARIANTS:
            print(f"=== {name} ===")
            results[name] = run_variant(name, tmp / "data", tmp, args.steps, args.eval_steps)

    # the target: the worse of the two best validation losses, so both runs reach it
    target = max(r["best_eval_loss"] for r in results.values())
    for r in results.values():
        r["seconds_to_target"] = time_to_reach(r["evals"], target)
    speedup = results["project"]["answer_tokens_per_s"] / results["recipe"]["answer_tokens_per_s"]
    summary = {
        "steps": args.steps,
        "target_eval_loss": round(target, 4),
        "answer_tokens_per_s_speedup": round(speedup, 2),
        "time_to_target_speedup": round(
            results["recipe"]["seconds_to_target"] / results["project"]["seconds_to_target"], 2
        ),
        "goal": GOAL,
        "pass": speedup >= GOAL,
        "variants": results,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "train_bench.json").write_text(json.dumps(summary, indent=2))

    print(f"\n{'variant':10} {'answer tok/s':>13} {'train s':>8} {'eval s':>7} "
          f"{'best val':>9} {'s to target':>12}")
    for name, r in results.items():
        print(f"{name:10} {r['answer_tokens_per_s']:13.1f} {r['train_seconds']:8.0f} "
              f"{r['eval_seconds']:7.0f} {r['best_eval_loss']:9.3f} {r['seconds_to_target']!s:>12}")
    print(f"target validation loss {target:.3f}; answer tokens/s {speedup:.2f}x, "
          f"time to target {summary['time_to_target_speedup']}x; "
          f"goal >= {GOAL}x: {'PASS' if summary['pass'] else 'MISS'}")


if __name__ == "__main__":
    main()
