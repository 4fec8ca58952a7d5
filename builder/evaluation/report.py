"""The eval report, rendered once: the figures per system as rows, a text table for the
terminal, markdown for report.md, the page and the model card, the chart, and the answers
table (answers.csv).

    from builder.evaluation.report import figure_rows, figures_markdown, read_summary
    figures_markdown(report)                 # | figure | base + retrieval | ... |
    read_summary("runs/demo")                # what the page shows of RUN/eval/
"""

import json
from dataclasses import dataclass
from pathlib import Path

from builder.evaluation.metrics import LABELS
from builder.run import Run, process_start

EVAL_RUNNING = "eval.running"  # `builder eval` keeps RUN/eval.running while it works


def answer_table(rows: dict, by_split: dict, asked: list[dict], asked_replies: dict,
                  systems: list[str], model_alone: list | None = None) -> list[dict]:
    """One record per question: the texts and, per system, the answer and its flags; for the
    split rows also the tuned model's own answer without the FAQ lookup (`model_alone`)."""
    from builder.evaluation.scores import answered_right
    from builder.facts import fact_recall

    def record(split, question, context, reference, replies, ok):
        out = {"split": split, "question": question, "context": context, "reference": reference}
        for s in systems:
            r = replies[s]
            out[f"{s}_answer"] = r.text
            out[f"{s}_correct"] = ok(r)
            out[f"{s}_declined"] = r.declined
            out[f"{s}_sources"] = ";".join(str(h.entry.line or h.entry.id) for h in r.sources)
        tuned = replies.get("tuned")
        if tuned is not None:
            flags = ("exact", "gated", "guarded", "fallback", "runaway")
            out["tuned_flags"] = " ".join(name for name in flags if getattr(tuned, name))
            out["tuned_generated"] = tuned.generated
        return out

    table = []
    alone = iter(model_alone or [])
    for split, split_rows in rows.items():
        for i, row in enumerate(split_rows):
            replies = {s: by_split[split][s][i] for s in systems}
            table.append(record(split, row["instruction"], row.get("input") or "", row["output"],
                                replies, lambda r, ref=row["output"]:
                                0.0 if r.declined and fact_recall(r.text, ref) is not None
                                else fact_recall(r.text, ref)))
            if model_alone:
                table[-1]["tuned_model_answer"] = next(alone).text
    for i, q in enumerate(asked):
        replies = {s: asked_replies[s][i] for s in systems}
        if q["expected"]:
            ok = lambda r, q=q: int(answered_right(q, r))  # noqa: E731
        else:
            ok = lambda r: int(r.declined)  # noqa: E731
        # a follow-up's earlier question shows in the context column
        table.append(record(q["kind"], q["question"], q.get("earlier", ""),
                            q["expected"] or "(decline)", replies, ok))
    return table


FIGURES = [  # (section, key, label) shown in the summary, report.md and the chart
    ("test", "fact_accuracy", "test split: facts right (entries never trained)"),
    ("train_sample", "fact_accuracy", "trained questions: facts right"),
    ("questions", "paraphrase_facts", "paraphrased questions: facts right"),
    ("questions", "vocabulary_facts", "customers' own words: facts right"),
    ("questions", "follow_up_facts", "follow-ups: facts right"),
    ("questions", "two_entry_facts", "two-entry questions: both facts right"),
    ("questions", "off_topic_declined", "off-topic questions declined"),
    ("questions", "unanswerable_declined", "unanswerable questions declined"),
    ("questions", "near_miss_declined", "near misses declined"),
]


def figure_rows(report: dict) -> list[tuple[str, list, str]]:
    """[(label, [value per system], kind)] of a report, kind "share" (0-1), "count" or "score":
    the one list every rendering shows. An older report (a "summary" of base and tuned only)
    gives its summary rows."""
    systems = list(report.get("systems") or {})
    splits, q = report.get("splits") or {}, report.get("questions") or {}
    summary = report.get("summary") or {}
    if not splits:
        return [(f"test split: {m}", [v.get(s) for s in systems], "score")
                for m, v in summary.items()]
    rows = []

    def add(label, values, kind):
        if any(v is not None for v in values):
            rows.append((label, values, kind))

    for section, key, label in FIGURES:
        table = q if section == "questions" else splits.get(section, {})
        add(label, [table.get(s, {}).get(key) for s in systems], "share")
    if judge := report.get("judge"):
        per = judge.get("systems", {})
        add(f"judge ({judge.get('model')}): faithful to the FAQ entries",
            [per.get(s, {}).get("faithful") for s in systems], "share")
        add("judge: helpfulness (1-5)", [per.get(s, {}).get("helpful") for s in systems], "score")
        add("judge agrees with the fact checks",
            [per.get(s, {}).get("agrees_with_facts") for s in systems], "share")
        if pair := judge.get("pairwise"):
            add("judge prefers this answer (fine-tuned vs base, pairwise)",
                [pair.get(s) if s in ("tuned", "base") else None for s in systems], "count")
    add("test split: chrF (0-100)", [(summary.get("chrf") or {}).get(s) for s in systems], "score")
    for split, label in (("train_sample", "trained questions"), ("test", "test questions")):
        table = splits.get(split, {})
        if "model_fact_accuracy" in table.get("tuned", {}):
            tuned = table["tuned"]
            replaced = tuned.get("model_guard_fallbacks")
            add(f"{label}: facts right when generated (no word-for-word lookup"
                + (f"; guard replaced {replaced})" if replaced is not None else ")"),
                [tuned["model_fact_accuracy"] if s == "tuned" else None for s in systems],
                "share")
        if any("exact" in table.get(s, {}) for s in systems):
            add(f"{label} asked word for word (FAQ answer shown)",
                [table.get(s, {}).get("exact") for s in systems], "count")
    for key, label in (("invented_shown", "answers shown with an invented fact"),
                       ("invented_in_declines", "declined answers with an invented fact"),
                       ("invented_before_guard", "answers the guard stopped for an invented fact"),
                       ("guard_fallbacks", "answers the guard completed or replaced with an "
                                           "FAQ answer"),
                       ("runaway", "runaway answers cut")):
        if q:
            add(label, [q.get(s, {}).get(key) for s in systems], "count")
    return rows


def fmt(value, kind: str = "share") -> str:
    if value is None:
        return "-"
    if kind == "share":
        return f"{value:.0%}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown_table(labels: list[str], rows, first: str = "") -> list[str]:
    """The figure rows as a markdown table, one column per system label."""
    lines = [f"| {first} | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    return lines + [f"| {label} | " + " | ".join(fmt(v, kind) for v in values) + " |"
                    for label, values, kind in rows]


def retrieval_lines(report: dict, bullet: str = "") -> list[str]:
    return [f"{bullet}retrieval on {name.replace('_', ' ')}: hit@1 {fmt(hits.get('hit@1'))}, "
            f"hit@3 {fmt(hits.get('hit@3'))} ({hits.get('questions')} questions)"
            for name, hits in (report.get("retrieval") or {}).items()]


def figures_markdown(report: dict) -> str:
    """The figures, retrieval and verdict of a report in markdown (report.md, the model card)."""
    systems = report.get("systems") or {}
    lines = markdown_table(list(systems.values()), figure_rows(report)) + [""]
    lines += retrieval_lines(report, "- ")
    lines += ["", "## Verdict", ""] + [f"- {v}" for v in report.get("verdict", [])]
    return "\n".join(lines)


def format_summary(report: dict) -> str:
    """The figures a shop owner needs, one line each, per system; then the verdict."""
    systems, rows = list(report["systems"]), figure_rows(report)
    width = max((len(label) for label, _, _ in rows), default=40)
    lines = [f"{'':<{width}}" + "".join(f"{s:>12}" for s in systems)]
    lines += [f"{label:<{width}}" + "".join(f"{fmt(v, kind):>12}" for v in values)
              for label, values, kind in rows]
    return "\n".join(lines + retrieval_lines(report) + [""] + report.get("verdict", []))


def markdown(report: dict, answers: list[dict], examples: int = 4) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", "<br>")

    systems = list(report["systems"])
    lines = [f"# Evaluation: {report['base_model']}, fine-tuned vs base vs retrieval only", "",
             f"Greedy answers, up to {report['settings']['max_new_tokens']} new tokens; "
             f"data `{report['data_dir']}`; questions `{report['settings']['questions']}`.", "",
             figures_markdown(report), ""]
    for split, figures in report["splits"].items():
        metrics = [m for m in ("chrf", "rouge_l", "bleu", "exact_match", "loss", "ppl")
                   if any(m in figures[s] for s in systems)]
        lines += [f"## Text scores, {split.replace('_', ' ')}", "",
                  "| metric | " + " | ".join(systems) + " |", "|---|" + "---:|" * len(systems)]
        lines += [f"| {LABELS[m]} | " + " | ".join(fmt(figures[s].get(m)) if m == "exact_match"
                                                  else str(figures[s].get(m, "-"))
                                                  for s in systems) + " |" for m in metrics]
        lines.append("")
    wrong = [a for a in answers if a.get("tuned_correct") in (0, 0.0, False)]
    lines += ["## Questions the fine-tuned bot got wrong", ""]
    for row in wrong[:examples * 5]:
        lines.append(f"- **{cell(row['question'])}** ({row['split']}): expected "
                     f"{cell(row['reference'])[:80]} — got {cell(row['tuned_answer'])[:120]}")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Grouped bars per figure (share of questions, 0-100 %), one bar per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(report["systems"])
    figures = [(label, values) for label, values, kind in figure_rows(report) if kind == "share"]
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=110)
    colors = {"base": "tab:gray", "tuned": "tab:blue", "retrieval": "tab:orange"}
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        x = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(figures))]
        values = [100 * (v[i] or 0) for _, v in figures]
        bars = ax.bar(x, values, width, label=report["systems"][system], color=colors[system])
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(figures)), [label.replace(": ", ":\n") for label, _ in figures],
                  fontsize=7)
    ax.set_ylim(0, 110)
    ax.set_ylabel("% of questions")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("What the bot gets right: fine-tuned vs base vs retrieval only")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass
class EvalSummary:
    """What the page shows of RUN/eval/: the systems, one row per figure, the verdict."""

    running: bool  # RUN/eval.running exists: an eval is under way (rows are the last one's)
    systems: dict  # {system: label} in the report's order; {} when there is no report
    rows: list  # figure_rows: [(label, [value per system], kind)]
    retrieval: dict  # {"test_split" | "paraphrases": {"hit@1", "hit@3", "questions"}}
    verdict: list  # plain sentences
    chart: Path | None


def eval_running(marker: Path) -> bool:
    """RUN/eval.running names a live process: a killed eval (SIGKILL, a power cut) leaves the
    file behind, and its PID is gone (or is no longer an eval)."""
    import os

    try:
        written = json.loads(marker.read_text(encoding="utf-8"))
        pid = int(written["pid"])
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):  # an older marker: a timestamp only
        return marker.exists()
    try:
        os.kill(pid, 0)  # signal 0: does the process exist?
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    # a PID used again later is another process: its start time differs
    return written.get("process_start") in (None, process_start(pid))


def read_summary(run_dir: str | Path | None) -> EvalSummary:
    """RUN/eval/report.json and chart.png, and whether RUN/eval.running says an eval is under
    way."""
    if not run_dir:
        return EvalSummary(False, {}, [], {}, [], None)
    run = Run(run_dir)
    running = eval_running(run.path / EVAL_RUNNING)
    try:
        report = json.loads((run.eval_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no eval yet, or one being swapped in
        report = {}
    if not isinstance(report, dict) or not report.get("summary"):
        return EvalSummary(running, {}, [], {}, [], None)
    summary = report["summary"]  # {metric: {system: x}}, test split
    systems = report.get("systems") or {s: s for s in ("base", "tuned", "retrieval")
                                         if any(s in v for v in summary.values())}
    chart = run.eval_dir / "chart.png"
    return EvalSummary(running, dict(systems), figure_rows({**report, "systems": systems}),
                       report.get("retrieval") or {}, list(report.get("verdict") or []),
                       chart if chart.is_file() else None)
