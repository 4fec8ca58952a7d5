"""The eval stage: base model vs fine-tuned model on the test split, scored for Korean.

    builder eval RUN_DIR [--data PREPARED_DIR]
    builder eval runs/demo --train-sample 20 --max-new-tokens 128 --limit 10

Every test question (at most --limit) and a seeded sample of questions the run trained on (a
memorisation check) are answered greedily by the tuned model (merged/, else base + adapter/) and
by the base model, through builder.chat with the run's template and stop rules. Scores: chrF,
ROUGE-L and BLEU on Kiwi morphemes, exact match, and the reference's loss and perplexity under
each model, computed as training computed its loss. Writes RUN/eval/ (report.json, answers.csv,
report.md, chart.png), complete or absent; re-running replaces it.
"""

import csv
import functools
import gc
import json
import math
import random
import re
import shutil
import tempfile
import time
import unicodedata
from pathlib import Path

from builder.errors import UserError

METRICS = ("chrf", "rouge_l", "bleu", "exact_match", "loss", "ppl")
LABELS = {"chrf": "chrF", "rouge_l": "ROUGE-L", "bleu": "BLEU", "exact_match": "exact match",
          "loss": "loss", "ppl": "perplexity"}
METRIC_NOTES = {  # what each summary number is, written into report.json
    "chrf": "sacrebleu chrF (character 6-grams, beta 2), corpus-level, 0-100",
    "rouge_l": "LCS F1 on Kiwi morphemes, mean over questions, 0-1",
    "bleu": "sacrebleu corpus BLEU on Kiwi morphemes (tokenize=none), 0-100",
    "exact_match": "share equal after NFC, whitespace collapse, trailing punctuation cut",
    "loss": "mean NLL (nats) per reference answer token + EOS given the prompt, as in training",
    "ppl": "exp(loss)",
}
# Kiwi tags left out of morpheme sequences: sentence punctuation, brackets, ellipsis; a closing
# "." instead of "!" says nothing about an answer's content.
PUNCTUATION_TAGS = ("SF", "SP", "SS", "SE")
TRAILING_PUNCTUATION = re.compile(r"[\s.!?。．！？…~～]+$")


# ---------------------------------------------------------------------------------------------
# Metrics: pure functions on strings


def normalize(text: str) -> str:
    """NFC (a decomposed 한 is three jamo), whitespace collapsed, trailing punctuation cut."""
    return TRAILING_PUNCTUATION.sub("", " ".join(unicodedata.normalize("NFC", text).split()))


@functools.lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()  # loading its model takes 1-4 s: once per process


def morphemes(text: str) -> list[str]:
    """Kiwi morpheme forms without punctuation: '배송은 2일 걸립니다.' -> 배송 은 2 일 걸리 ᆸ니다."""
    text = unicodedata.normalize("NFC", text).strip()
    tokens = _kiwi().tokenize(text) if text else []
    return [t.form.replace(" ", "_") for t in tokens if not t.tag.startswith(PUNCTUATION_TAGS)]


def exact_match(hyp: str, ref: str) -> float:
    return float(normalize(hyp) == normalize(ref))


# chrF: character 1-6-grams. Korean is agglutinative (배송은 / 배송이 / 배송을 are one noun):
# character n-grams credit the shared stem where whole words would not match at all.
def chrf(hyp: str, ref: str) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(normalize(hyp), [normalize(ref)]).score


def corpus_chrf(hyps: list[str], refs: list[str]) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score([normalize(h) for h in hyps], [[normalize(r) for r in refs]]).score


# BLEU on Kiwi morphemes with tokenize="none". Korean BLEU is conventionally computed on
# morphemes (sacrebleu's ko-mecab, used at WMT); Kiwi gives that kind of split without mecab.
# On eojeol (space words) 배송은 vs 배송이 is a miss; char BLEU over-credits the syllables that
# every polite answer shares (니, 다, 습, 요), so unrelated answers score well above zero.
def bleu(hyp: str, ref: str) -> float:
    """Sentence BLEU (0-100); n-gram orders longer than the sentence are skipped."""
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="none", effective_order=True).sentence_score(
        " ".join(morphemes(hyp)), [" ".join(morphemes(ref))]).score


def corpus_bleu(hyps: list[str], refs: list[str]) -> float:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="none").corpus_score(
        [" ".join(morphemes(h)) for h in hyps], [[" ".join(morphemes(r)) for r in refs]]).score


# ROUGE-L on Kiwi morphemes, not characters: the longest common subsequence keeps the content
# morphemes (배송, 2, 일, 걸리) matching when a 조사 or 어미 differs (은/이, ㅂ니다/어요), which
# then costs one morpheme: close to how a Korean reader judges "the same answer". A character
# LCS rewards unrelated sentences for the syllables of polite endings they share.
def rouge_l(hyp: str, ref: str) -> float:
    """ROUGE-L F1 (0-1) over morphemes."""
    h, r = morphemes(hyp), morphemes(ref)
    if not h or not r:
        return float(h == r)
    previous = [0] * (len(r) + 1)  # LCS table, one row at a time
    for x in h:
        current = [0]
        for j, y in enumerate(r):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    return 2 * lcs / (len(h) + len(r))  # F1 of precision lcs/|h| and recall lcs/|r|


# ---------------------------------------------------------------------------------------------
# Loss of the reference answer, exactly as training computed it


def answer_loss(model, tokenizer, template, row: dict, max_length: int = 512) -> tuple[float, int]:
    """(summed NLL in nats, number of answer tokens) of row["output"] + EOS after the prompt.

    Tokens and cut are builder.train's (prompt with BOS, answer + EOS without special tokens);
    only the answer positions are scored, so only their logits are computed.
    """
    import torch
    import torch.nn.functional as F

    from builder.train import tokenize_row

    example = tokenize_row(tokenizer, template, row, max_length, tokenizer.eos_token_id)
    ids = torch.tensor([example["input_ids"]], device=next(model.parameters()).device)
    n_answer = sum(example["completion_mask"])
    with torch.inference_mode():
        # the last n_answer + 1 positions; position t predicts token t + 1
        logits = model(input_ids=ids, logits_to_keep=n_answer + 1).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[0, -n_answer:], reduction="sum").item(), n_answer


# ---------------------------------------------------------------------------------------------
# The two models over the rows


def _read_inputs(run_dir: Path, data_dir) -> tuple[dict, Path]:
    if not (run_dir / "meta.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (no meta.json); train one with "
                        f"`builder train PREPARED_DIR --out {run_dir}`")
    if not ((run_dir / "merged" / "config.json").is_file()
            or (run_dir / "adapter" / "adapter_config.json").is_file()):
        raise UserError(f"{run_dir} has neither adapter/ nor merged/: finish training with "
                        f"`builder train PREPARED_DIR --out {run_dir} --resume`")
    meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
    data_dir = Path(data_dir or meta.get("data_dir") or "(none recorded)")
    if not (data_dir / "report.json").is_file() or not (data_dir / "dataset").is_dir():
        raise UserError(f"{data_dir}: no prepared data folder there (meta.json records the run's); "
                        "pass --data PREPARED_DIR, made by `builder prepare FAQ_FILE --out DIR`")
    return meta, data_dir


def _pick_rows(meta: dict, dataset, train_sample: int, limit: int | None) -> dict[str, list[dict]]:
    from builder.config import config_from_dict
    from builder.train import split_validation

    # only rows the run trained on: the validation rows carved from train were never learned
    trained, _ = split_validation(dataset["train"], config_from_dict(meta["config"]))
    n = min(train_sample, len(trained))
    picked = sorted(random.Random(meta.get("seed", 0)).sample(range(len(trained)), n))
    return {"test": [dict(r) for r in dataset["test"]][:limit],
            "train_sample": [dict(trained[i]) for i in picked]}


def _base_bot(meta: dict, tokenizer, template, end_ids: set[int], device):
    """The base model behind the tuned bot's tokenizer, template and end tokens."""
    from transformers import AutoModelForCausalLM

    from builder.chat import Chatbot, load_dtype

    path = meta.get("base_model_path")
    if not path or not Path(path).is_dir():
        raise UserError(f"meta.json: base model folder {path!r} not found; eval compares with it")
    dtype = load_dtype(Path(path), device)  # as chat loads it
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return Chatbot(model, tokenizer, template, end_ids)


def _free_memory(device) -> None:
    """Give a dropped model's memory back before the next one loads (an 8B model is ~16 GB)."""
    import torch

    gc.collect()  # a model's modules and hooks hold reference cycles
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _run_model(bot, rows: dict, max_new_tokens: int, max_length: int, name: str) -> dict:
    """{split: [{"answer", "nll", "tokens"}, ...]} for one model."""
    from tqdm.auto import tqdm

    out = {}
    for split, split_rows in rows.items():
        out[split] = []
        for row in tqdm(split_rows, desc=f"{name} model, {split}", unit="question"):
            answer = bot.answer(row["instruction"], row.get("input") or "",
                                max_new_tokens=max_new_tokens, temperature=0.0)
            nll, tokens = answer_loss(bot.model, bot.tokenizer, bot.template, row, max_length)
            out[split].append({"answer": answer, "nll": nll, "tokens": tokens})
    return out


def _summarize(refs: list[str], results: dict) -> dict:
    """{metric: {"base": x, "tuned": y}}; {} for no rows."""
    if not refs:
        return {}
    summary = {m: {} for m in METRICS}
    for name, res in results.items():
        hyps = [x["answer"] for x in res]
        loss = sum(x["nll"] for x in res) / sum(x["tokens"] for x in res)  # per answer token
        summary["chrf"][name] = round(corpus_chrf(hyps, refs), 2)
        summary["rouge_l"][name] = round(sum(map(rouge_l, hyps, refs)) / len(refs), 4)
        summary["bleu"][name] = round(corpus_bleu(hyps, refs), 2)
        summary["exact_match"][name] = round(sum(map(exact_match, hyps, refs)) / len(refs), 4)
        summary["loss"][name] = round(loss, 4)
        summary["ppl"][name] = round(math.exp(loss), 3)
    return summary


# ---------------------------------------------------------------------------------------------
# The stage


def evaluate(run_dir, *, data_dir=None, train_sample: int = 20, max_new_tokens: int = 128,
             limit: int | None = None, log=print) -> dict:
    """Score base vs tuned on the test split (+ a train sample); writes RUN/eval/; the report."""
    from builder.chat import Chatbot
    from builder.data import replace_dir
    from builder.train import file_sha256, load_prepared

    run_dir = Path(run_dir)
    if train_sample < 0:
        raise UserError(f"--train-sample {train_sample}: give 0 or more training questions")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: give 1 or more test questions (or leave it out for all)")
    meta, data_dir = _read_inputs(run_dir, data_dir)
    rows = _pick_rows(meta, load_prepared(data_dir), train_sample, limit)
    max_length = meta["config"]["model"]["max_seq_length"]
    log(f"evaluating {run_dir}: {len(rows['test'])} test and {len(rows['train_sample'])} training "
        f"questions, up to {max_new_tokens} new tokens per answer, base and tuned")

    # Generate and score, one model in memory at a time
    started = time.perf_counter()
    tuned = Chatbot.load(run_dir)
    weights = "adapter" if hasattr(tuned.model, "peft_config") else "merged"
    results = {"tuned": _run_model(tuned, rows, max_new_tokens, max_length, "tuned")}
    shared = tuned.tokenizer, tuned.template, set(tuned.end_ids), tuned.device
    del tuned
    _free_memory(shared[-1])
    base = _base_bot(meta, *shared)
    results["base"] = _run_model(base, rows, max_new_tokens, max_length, "base")
    del base
    wall = time.perf_counter() - started

    def summarize(split: str) -> dict:
        by_model = {name: results[name][split] for name in ("base", "tuned")}
        return _summarize([r["output"] for r in rows[split]], by_model)

    data_sha256 = file_sha256(data_dir / "train.csv", data_dir / "test.csv")
    if data_sha256 != meta.get("data_sha256"):
        log(f"note: {data_dir} is not the data this run was trained on (data_sha256 differs)")
    report = {
        "run_dir": str(run_dir.resolve()),
        "base_model": meta["base_model"],
        "tuned_weights": weights,
        "template": meta["template"],
        "data_dir": str(data_dir.resolve()),
        "data_matches_run": data_sha256 == meta.get("data_sha256"),
        "settings": {"max_new_tokens": max_new_tokens, "train_sample": train_sample, "limit": limit,
                     "decoding": "greedy", "sample_seed": meta.get("seed", 0),
                     "metrics": METRIC_NOTES},
        "rows": {split: len(r) for split, r in rows.items()},
        "summary": summarize("test"),
        "train_sample": summarize("train_sample"),
        "wall_time_s": round(wall, 1),
    }

    # Write eval/ into a staging folder, then swap it in
    staging = Path(tempfile.mkdtemp(prefix=".eval-", dir=run_dir))
    try:
        answers = _answer_table(rows, results)
        (staging / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2),
                                             encoding="utf-8")
        # utf-8-sig: Excel, which most shops open a CSV with, then shows Hangul right
        with (staging / "answers.csv").open("w", encoding="utf-8-sig", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(answers[0]) if answers else ["split"])
            writer.writeheader()
            writer.writerows(answers)
        (staging / "report.md").write_text(_markdown(report, answers), encoding="utf-8")
        _plot(report, staging / "chart.png")
        staging.chmod(0o755)
        replace_dir(staging, run_dir / "eval")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {run_dir / 'eval'} in {wall:.0f} s")  # the door prints format_summary(report)
    return report


# ---------------------------------------------------------------------------------------------
# Outputs


def _answer_table(rows: dict, results: dict) -> list[dict]:
    """One record per question: the texts, then each score for base and tuned side by side."""
    table = []
    for split, split_rows in rows.items():
        for i, row in enumerate(split_rows):
            ref = row["output"]
            base, tuned = results["base"][split][i], results["tuned"][split][i]
            record = {"split": split, "question": row["instruction"],
                      "context": row.get("input") or "", "reference": ref,
                      "base_answer": base["answer"], "tuned_answer": tuned["answer"]}
            for metric in (chrf, rouge_l, bleu, exact_match):
                for name, res in (("base", base), ("tuned", tuned)):
                    record[f"{name}_{metric.__name__}"] = round(metric(res["answer"], ref), 4)
            for name, res in (("base", base), ("tuned", tuned)):
                record[f"{name}_loss"] = round(res["nll"] / res["tokens"], 4)
            table.append(record)
    return table


def _sections(report: dict):
    for key, split, title in (("summary", "test", "test split"),
                              ("train_sample", "train_sample", "training sample (memorisation)")):
        if report.get(key):
            yield f"{title}, {report['rows'][split]} questions", report[key]


def format_summary(report: dict) -> str:
    """A short text table: metric, base, tuned, for the test split and the training sample."""
    lines = []
    for title, summary in _sections(report):
        lines.append(f"{title:<44}{'base':>10}{'tuned':>10}")
        lines += [f"  {LABELS[m]:<42}{v['base']:>10.3f}{v['tuned']:>10.3f}"
                  for m, v in summary.items()]
    return "\n".join(lines)


def _markdown(report: dict, answers: list[dict], examples: int = 3) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", "<br>")

    lines = [f"# Evaluation: {report['base_model']}, base vs fine-tuned", "",
             f"Greedy answers, up to {report['settings']['max_new_tokens']} new tokens; "
             f"data `{report['data_dir']}`.", ""]
    for title, summary in _sections(report):
        lines += [f"## {title[0].upper() + title[1:]}", "", "| metric | base | tuned |",
                  "|---|---:|---:|"]
        lines += [f"| {LABELS[m]} | {v['base']:.3f} | {v['tuned']:.3f} |"
                  for m, v in summary.items()]
        lines.append("")
    lines += ["## Examples from the test split", ""]
    for row in [r for r in answers if r["split"] == "test"][:examples]:
        lines += [f"**Q:** {cell(row['question'])}", "", "| | answer | chrF |", "|---|---|---:|",
                  f"| reference | {cell(row['reference'])} | |",
                  f"| base | {cell(row['base_answer'])} | {row['base_chrf']:.1f} |",
                  f"| tuned | {cell(row['tuned_answer'])} | {row['tuned_chrf']:.1f} |", ""]
    return "\n".join(lines)


def _plot(report: dict, path: Path) -> None:
    """Grouped bars base vs tuned: the scores (out of 100), then loss and perplexity on their own
    axes, as their scales differ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, scaled = report["summary"], {"rouge_l": 100, "exact_match": 100}  # 0-1 -> 0-100
    fig, axes = plt.subplots(1, 3, figsize=(11, 4), dpi=110, width_ratios=[4, 1, 1])
    panels = [(axes[0], ("chrf", "rouge_l", "bleu", "exact_match"), "score (out of 100)"),
              (axes[1], ("loss",), "loss (nats per answer token)"),
              (axes[2], ("ppl",), "perplexity (exp of the loss)")] if summary else []
    for ax, metrics, ylabel in panels:
        for offset, name, color in ((-0.2, "base", "tab:gray"), (0.2, "tuned", "tab:blue")):
            values = [summary[m][name] * scaled.get(m, 1) for m in metrics]
            x = [i + offset for i in range(len(metrics))]
            fmt = "%.2f" if metrics == ("loss",) else "%.1f"
            ax.bar_label(ax.bar(x, values, 0.4, label=name, color=color), fmt=fmt, fontsize=8)
        ax.set_xticks(range(len(metrics)), [LABELS[m] + (" ×100" * (m in scaled)) for m in metrics])
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    if summary:
        axes[0].legend()
    fig.suptitle(f"Base vs fine-tuned, test split ({report['rows']['test']} questions)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
