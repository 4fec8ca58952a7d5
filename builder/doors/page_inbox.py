"""The page's 5. 인박스 tab: the questions the bot did not answer well (declined, cut by the
fact guard, 👎, weakly matched), grouped by builder.owner.inbox, and what the owner does about
each group: write its answer (a new FAQ row), name the entry that should have answered, or
say the decline is right. The run's loaded bot answers from the new knowledge at once, and the
tab says how long that took. Below, the log's figures (builder.owner.charts).

Routes: /inbox (the open groups, the FAQ entries, the figures), /inbox_group (one group's
wordings and answers), /inbox_answer, /inbox_map, /inbox_decline.

The groups are customers' own words, so an --open page shows none; the actions change what a
run answers, so they follow the FAQ update's rule (Page.writable_run)."""

import hashlib
import json
import time
from pathlib import Path

from builder.doors.page_common import Page, hidden, shown
from builder.errors import UserError

# words, not 👍/👎: a browser without an emoji font shows boxes
KINDS_KO = {"declined": "거절 declined", "guarded": "가드 guarded", "disliked": "싫어요 disliked",
            "weak": "약한 답 weak"}
HEADERS = ["횟수 times", "마지막 last", "종류 kinds", "질문 question", "봇의 답 bot said"]
CHART_KEEP_S = 60.0  # a superseded chart stays this long: a session may still be sending it
PICK_GROUP = "묶음을 먼저 고르세요 / pick a group first"


def inbox_tab(page: Page) -> None:
    import gradio as gr

    with gr.Tab("5. 인박스", id="inbox") as tab:
        with gr.Row():
            run = gr.Dropdown(page.run_choices(), value=page.default_run(), scale=4,
                              label="모델 (실행 폴더)", allow_custom_value=True,
                              elem_id="inbox-run")
            days = gr.Slider(1, 365, 30, step=1, label="최근 며칠 / last days", scale=2,
                             elem_id="inbox-days")
            refresh = gr.Button("↻ 새로고침", scale=1, elem_id="inbox-refresh")
        error = gr.Markdown(visible=False, elem_id="inbox-error", elem_classes="error-box")
        table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True,
                             column_widths=["9%", "11%", "15%", "30%", "35%"],
                             label="답하지 못한 질문 / open questions: 줄을 고르면 아래에 자세히",
                             elem_id="inbox-table")
        # custom values: a group or a line another session (or the API) names is checked by
        # builder.owner.inbox, not refused for missing from this session's list
        group = gr.Dropdown([], label="묶음 group", allow_custom_value=True, elem_id="inbox-group")
        detail = gr.Markdown(elem_id="inbox-detail")
        with gr.Row():
            with gr.Column(scale=3):
                text = gr.Textbox(label="답변 쓰기 / write the answer (새 FAQ 행 a new FAQ row)",
                                  lines=3, elem_id="inbox-answer-text")
                write = gr.Button("답변 저장 / save the answer", variant="primary",
                                  elem_id="inbox-answer")
            with gr.Column(scale=3):
                entry = gr.Dropdown([], label="답했어야 할 FAQ / the entry that should have "
                                    "answered", allow_custom_value=True,
                                    elem_id="inbox-entry")
                pick = gr.Button("이 FAQ로 답하기 / answer with this entry", elem_id="inbox-map")
            with gr.Column(scale=2):
                decline = gr.Button("거절이 맞음 / decline is right", elem_id="inbox-decline")
        result = gr.Markdown(elem_id="inbox-result")
        with gr.Accordion("통계 / figures", open=True):
            numbers = gr.Markdown(elem_id="inbox-numbers")
            chart = gr.Image(label="통계 figures", type="filepath", interactive=False,
                             elem_id="inbox-chart")
    seen = gr.State({})  # this session's groups: {"keys": [...], "details": {key: markdown}}

    def on_view(run_dir, n_days, current=None):
        """(table, group choices, entry choices, figures, chart, error, seen)."""
        try:
            view = inbox_view(page, run_dir, int(n_days))
        except UserError as err:
            empty = gr.update(choices=[], value=None)
            return [], empty, empty, "", None, shown(str(err)), {}
        keys = [key for _, key in view["choices"]]
        return (view["table"],
                gr.update(choices=view["choices"], value=current if current in keys else None),
                gr.update(choices=view["entries"], value=None), view["summary"],
                str(view["chart"]), hidden(), {"keys": keys, "details": view["details"]})

    def on_group(key, groups):
        return (groups.get("details") or {}).get(key, "") if key else ""

    def on_select(groups, event: gr.SelectData):
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        keys = groups.get("keys") or []
        return keys[row] if isinstance(row, int) and 0 <= row < len(keys) else gr.skip()

    def action(do):
        def on_action(run_dir, key, *value_and_days):  # decline has no value
            *value, n_days = value_and_days
            try:
                message, failed = do(page, run_dir, key, *value), None
            except UserError as err:
                message, failed = "", shown(str(err))
            view = list(on_view(run_dir, n_days, key))
            if failed is not None:  # the action's error, not the view's
                view[5] = failed
            return message, *view
        return on_action

    view_outputs = [table, group, entry, numbers, chart, error, seen]
    gr.on([tab.select, refresh.click, run.change, days.release], on_view, [run, days, group],
          view_outputs, api_name="inbox", concurrency_limit=None)
    group.change(on_group, [group, seen], detail, api_name="inbox_group",
                 concurrency_limit=None)
    table.select(on_select, seen, group, api_visibility="private", concurrency_limit=None)
    tab.select(page.runs_update, run, run, api_visibility="private", concurrency_limit=None)
    write.click(action(answer_group), [run, group, text, days], [result, *view_outputs],
                api_name="inbox_answer")
    pick.click(action(map_group), [run, group, entry, days], [result, *view_outputs],
               api_name="inbox_map")
    decline.click(action(decline_group), [run, group, days], [result, *view_outputs],
                  api_name="inbox_decline")


# What the tab shows


def inbox_view(page: Page, run_dir, days: int) -> dict:
    """The run's open groups (table rows, dropdown choices, details), its FAQ entries as
    choices, the figures and their chart."""
    from builder.owner import charts
    from builder.owner.inbox import inbox

    run = readable_run(page, run_dir)
    log = page.conversation_log(run)
    knowledge = page.bots.knowledge(run)
    groups = inbox(run, log, knowledge, days=days)
    numbers = charts.stats(log, days=days, groups=groups)
    entries = knowledge.entries if knowledge is not None else []
    return {
        "table": [[g.count, when(g.last_seen), kinds_text(g.kinds), g.question,
                   clip(g.answers[0] if g.answers else "")] for g in groups],
        "choices": [(f"{clip(g.question, 60)} ({g.count})", g.key) for g in groups],
        "details": {g.key: group_markdown(g) for g in groups},
        "entries": [(f"{e.line}행 {clip(e.question, 80)}", e.line) for e in entries if e.line],
        "summary": charts.summary(numbers),
        "chart": chart_file(numbers, page.chart_dir),
    }


def readable_run(page: Page, run_dir) -> str:
    if page.open_page:
        raise UserError("인박스를 보려면 로그인이 필요합니다 / this page is open to anyone "
                        "(--open), so it does not show the customers' questions: set "
                        "BUILDER_APP_PASSWORD for a login")
    run = page.inside(run_dir)
    if not run:
        raise UserError("실행(run)을 먼저 고르세요 / pick a run first")
    return run


def group_markdown(group) -> str:
    """One group: how often and when, its wordings, what the bot said, the nearest entry."""
    seen = f"{group.count}번 / times · 마지막 last {when(group.last_seen)}"
    lines = [f"### {group.question}", "", f"{seen} · {kinds_text(group.kinds)}", "",
             "**고객의 말 / wordings**", ""]
    lines += [f"- {q}" for q in group.questions]
    lines += ["", "**봇의 답 / what the bot said**", ""]
    lines += [f"- {clip(a, 300)}" for a in group.answers] or ["- (없음 / none)"]
    if group.best:
        best = group.best
        entry = (f"{best.get('line') or '-'}행 {best.get('question') or ''} → "
                 f"{clip(best.get('answer'), 200)}")
        lines += ["", f"**답한 FAQ / the entry it answered from**: {entry}"]
    return "\n".join(lines)


def kinds_text(kinds) -> str:
    counts = kinds if isinstance(kinds, dict) else {k: 1 for k in kinds}
    return " · ".join(f"{KINDS_KO.get(k, k)} {n}" if n > 1 else KINDS_KO.get(k, k)
                      for k, n in counts.items() if n)


def when(moment) -> str:
    return moment.astimezone().strftime("%m-%d %H:%M") if moment else ""


def clip(text: str, n: int = 120) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[:n - 1] + "…"


def chart_file(numbers: dict, chart_dir: Path) -> Path:
    """The figures drawn into the page's chart folder (the only one it serves), under a name
    of their numbers: new numbers, new URL. Older charts go once CHART_KEEP_S old."""
    from builder.owner.charts import draw

    name = hashlib.sha256(json.dumps(numbers, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(chart_dir) / f"inbox-{name}.png"
    if not path.is_file():
        draw(numbers, path)
    now = time.time()
    for old in path.parent.glob("inbox-*.png"):
        try:
            if old != path and now - old.stat().st_mtime > CHART_KEEP_S:
                old.unlink()
        except FileNotFoundError:  # another session deleted it in between
            pass
    return path


# What the owner does about a group


def answer_group(page: Page, run_dir, key, text) -> str:
    """The owner's answer becomes a FAQ row of the run, answered from at once."""
    from builder.owner import inbox

    text = (text or "").strip()
    if not text:
        raise UserError("답변을 먼저 쓰세요 / write the answer first")
    result, seconds = update(page, run_dir, key,
                             lambda run, log, bot: inbox.answer(run, log, key, text, bot=bot))
    return (f"✅ 새 FAQ 행을 더했습니다 (FAQ {result['entries']}개): 다음 질문부터 이 답으로 "
            f"답합니다 · {seconds:.1f}초 / added a FAQ row ({result['entries']} entries): the "
            f"bot answers with it from the next question on; the update took {seconds:.1f} s")


def map_group(page: Page, run_dir, key, line) -> str:
    """The group's questions become wordings of an existing entry (by its FAQ line)."""
    from builder.owner import inbox

    if not str(line or "").strip().isdigit():
        raise UserError("답했어야 할 FAQ를 고르세요 / pick the entry that should have answered "
                        f"(its line in the FAQ file), not {line!r}")
    result, seconds = update(page, run_dir, key, lambda run, log, bot: inbox.map_to_entry(
        run, log, key, int(line), bot=bot))
    return (f"✅ {line}행이 이 질문들에 답합니다 (FAQ {result['entries']}개) · {seconds:.1f}초 / "
            f"line {line} now answers these questions ({result['entries']} entries); the "
            f"update took {seconds:.1f} s")


def decline_group(page: Page, run_dir, key) -> str:
    from builder.owner import inbox

    run = page.writable_run(run_dir)
    if not run:
        raise UserError("실행(run)을 먼저 고르세요 / pick a run first")
    if not key:
        raise UserError(PICK_GROUP)
    inbox.decline_is_right(run, page.conversation_log(run), key)
    return "✅ 거절이 맞음: 인박스에서 뺐습니다 / the decline is right: the group left the inbox"


def update(page: Page, run_dir, key, write) -> tuple[dict, float]:
    """write(run, log, bot) rebuilds RUN/knowledge and hands it to the page's loaded bot of
    that run (None when another run is loaded), under the page's knowledge lock, as the FAQ
    update does: a chat loading the run meanwhile waits. (result, seconds it took)."""
    run = page.writable_run(run_dir)
    if not run:
        raise UserError("실행(run)을 먼저 고르세요 / pick a run first")
    if not key:
        raise UserError(PICK_GROUP)
    log = page.conversation_log(run)
    begun = time.perf_counter()
    with page.bots.lock:
        result = write(run, log, page.bots.loaded(run))
    return result, time.perf_counter() - begun
