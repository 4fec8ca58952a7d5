"""The owner's figures over the conversation log: how many questions a day, how many the bot
answered or declined, the customers' 👍/👎, the FAQ entries asked most and the questions left
unanswered; as numbers (`stats`) and as one PNG (`draw`), shown on the page's 인박스 tab.

    numbers = stats(log, days=30, groups=inbox(run_dir, log))
    draw(numbers, "charts/inbox.png")

Days are the server's local calendar days (the shop's day, not UTC's)."""

import io
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from builder.run import write_atomic

TOP = 10  # entries and unanswered groups shown
# Hangul needs a font that has it (fonts-nanum); DejaVu Sans covers the rest
FONTS = ["NanumGothic", "DejaVu Sans"]


def stats(log, days: int = 30, groups=()) -> dict:
    """The last `days` days of the log as plain numbers (JSON-ready).

    groups: the open inbox groups (builder.owner.inbox.inbox) whose most asked are listed as
    "unanswered". An answer's first source is the entry the question was matched to: that is
    the entry "asked"."""
    today = datetime.now().astimezone().date()
    first_day = today - timedelta(days=days - 1)
    since = datetime.combine(first_day, datetime.min.time()).astimezone().astimezone(UTC)
    rows = log.rows(since=since)
    per_day = {first_day + timedelta(days=i): {"answered": 0, "declined": 0} for i in range(days)}
    entries, texts = Counter(), {}
    for row in rows:
        day = per_day.get(row["at"].astimezone().date())
        if day is not None:
            day["declined" if row["declined"] else "answered"] += 1
        if not row["declined"] and row["sources"]:
            source = row["sources"][0]
            key = (source["line"], source["question"])
            entries[key] += 1
            texts[key] = source["question"]
    answered = sum(d["answered"] for d in per_day.values())
    declined = sum(d["declined"] for d in per_day.values())
    total = answered + declined
    return {
        "days": days, "from": first_day.isoformat(), "to": today.isoformat(),
        "questions": total, "answered": answered, "declined": declined,
        "answered_share": answered / total if total else 0.0,
        "declined_share": declined / total if total else 0.0,
        "per_day": [{"day": day.isoformat(), **counts} for day, counts in per_day.items()],
        "likes": sum(1 for r in rows if r["feedback"] == 1),
        "dislikes": sum(1 for r in rows if r["feedback"] == -1),
        "top_entries": [{"line": line, "question": question, "count": n}
                        for (line, question), n in entries.most_common(TOP)],
        "open_groups": len(groups),
        "unanswered": [{"question": g.question, "count": g.count,
                        "last_seen": g.last_seen.isoformat(timespec="minutes")}
                       for g in sorted(groups, key=lambda g: -g.count)[:TOP]],
    }


def summary(numbers: dict) -> str:
    """The key numbers in one Korean / English paragraph (Markdown)."""
    if not numbers["questions"]:
        return (f"최근 {numbers['days']}일 동안 질문이 없습니다 / no questions in the last "
                f"{numbers['days']} days")
    return (f"최근 {numbers['days']}일 / last {numbers['days']} days: 질문 questions "
            f"**{numbers['questions']}** · 답변 answered **{numbers['answered']}** "
            f"({numbers['answered_share']:.0%}) · 거절 declined **{numbers['declined']}** "
            f"({numbers['declined_share']:.0%}) · 좋아요 likes **{numbers['likes']}** · "
            f"싫어요 dislikes **{numbers['dislikes']}** · 답하지 못한 질문 묶음 open groups "
            f"**{numbers['open_groups']}**")


def draw(numbers: dict, path: str | Path) -> Path:
    """The figures of `stats` as one PNG, written whole (a temp file beside it, then renamed).
    matplotlib's object API, not pyplot, whose global state is not safe from the page's
    threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8), dpi=100)
    FigureCanvasAgg(fig)
    (per_day, shares), (entries, unanswered) = fig.subplots(
        2, 2, gridspec_kw={"width_ratios": [3, 2]})
    _per_day(per_day, numbers)
    _shares(shares, numbers)
    _ranking(entries, [(f"{e['line'] or '-'}행 {e['question']}", e["count"])
                       for e in numbers["top_entries"]],
             "많이 물은 FAQ / entries asked most", "tab:blue")
    _ranking(unanswered, [(g["question"], g["count"]) for g in numbers["unanswered"]],
             "답하지 못한 질문 / unanswered", "tab:red")
    fig.tight_layout()
    return _save(fig, Path(path))


def _per_day(ax, numbers: dict) -> None:
    days = [d["day"][5:] for d in numbers["per_day"]]  # MM-DD
    answered = [d["answered"] for d in numbers["per_day"]]
    declined = [d["declined"] for d in numbers["per_day"]]
    ax.bar(days, answered, color="tab:green", label="답변 answered")
    ax.bar(days, declined, bottom=answered, color="tab:gray", label="거절 declined")
    ax.set_title(f"하루 질문 수 / questions a day ({numbers['from']} – {numbers['to']})",
                 fontfamily=FONTS)
    step = max(1, len(days) // 10)  # at most ~10 day labels
    ax.set_xticks(range(0, len(days), step), days[::step], rotation=45, fontsize=8)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(prop={"family": FONTS})
    ax.grid(axis="y", alpha=0.3)


def _shares(ax, numbers: dict) -> None:
    # words, not 👍/👎: the emoji are in none of the chart's fonts
    labels = ["답변\nanswered", "거절\ndeclined", "좋아요\nlikes", "싫어요\ndislikes"]
    values = [numbers["answered"], numbers["declined"], numbers["likes"], numbers["dislikes"]]
    bars = ax.bar(labels, values, color=["tab:green", "tab:gray", "tab:blue", "tab:red"])
    total = numbers["questions"]
    notes = [f"{v / total:.0%}" if total and i < 2 else str(v) for i, v in enumerate(values)]
    ax.bar_label(bars, notes)
    ax.set_xticks(range(4), labels, fontfamily=FONTS)
    ax.set_title("답변·거절·평가 / answers, feedback", fontfamily=FONTS)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.margins(y=0.15)


def _ranking(ax, items: list[tuple[str, int]], title: str, color: str) -> None:
    ax.set_title(title, fontfamily=FONTS)
    if not items:
        ax.text(0.5, 0.5, "없음 / none", ha="center", va="center", fontfamily=FONTS,
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels = [text if len(text) <= 28 else text[:27] + "…" for text, _ in items][::-1]
    counts = [n for _, n in items][::-1]
    ax.barh(range(len(items)), counts, color=color)
    ax.set_yticks(range(len(items)), labels, fontfamily=FONTS, fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)


def _save(fig, path: Path) -> Path:
    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_atomic(path, png.getvalue(), mode=0o644)
    return path
