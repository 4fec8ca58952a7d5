"""The owner's commands: the conversation log (`builder log`) and the inbox (`builder inbox`).

    builder log export runs/demo --out answers.jsonl        # or --format csv (for Excel)
    builder log prune runs/demo --keep-days 90              # delete answers older than 90 days
    builder log forget runs/demo --customer ID              # one customer's conversations

    builder inbox runs/demo                                 # open questions, grouped
    builder inbox answer runs/demo KEY "네, 5,000원에 판매해요."  # a new FAQ row, live at once
    builder inbox map runs/demo KEY 14                      # FAQ line 14 answers it
    builder inbox decline runs/demo KEY                     # declining was right
"""

import argparse
import os

DB_HELP = ("the conversation log: a file (default RUN/conversations.db, SQLite) or "
           "postgresql://USER@HOST/DB (shared by several servers; the password from $PGPASSWORD "
           "or ~/.pgpass, never in the URL you type where others can see it)")


def db_flag(p) -> None:
    p.add_argument("--db", metavar="PATH|URL", default=os.environ.get("BUILDER_DB"),
                   help=DB_HELP + " (default: $BUILDER_DB)")


def add_owner_commands(commands) -> None:
    p = commands.add_parser("log", help="the conversation log: export, prune, forget a customer")
    actions = p.add_subparsers(dest="log_action", required=True, metavar="ACTION")
    a = actions.add_parser("export", help="questions, answers and feedback as CSV or JSONL")
    a.add_argument("run_dir")
    a.add_argument("--out", required=True, help="the file to write (.csv or .jsonl)")
    a.add_argument("--format", choices=["csv", "jsonl"], help="default: by --out's suffix")
    db_flag(a)
    a.set_defaults(run=cmd_log_export)
    a = actions.add_parser("prune", help="delete answers older than --keep-days")
    a.add_argument("run_dir")
    a.add_argument("--keep-days", type=int, required=True)
    db_flag(a)
    a.set_defaults(run=cmd_log_prune)
    a = actions.add_parser("forget", help="delete every conversation of one customer")
    a.add_argument("run_dir")
    a.add_argument("--customer", required=True,
                   help="their id as the channel gave it (a KakaoTalk user key, an API `user`)")
    db_flag(a)
    a.set_defaults(run=cmd_log_forget)

    # `builder inbox RUN` lists; `builder inbox ACTION RUN KEY ...` acts (parsed in cmd_inbox)
    p = commands.add_parser("inbox", help="questions the bot declined, got wrong or answered "
                            "poorly, grouped: list them, answer, map to an FAQ entry, decline",
                            description=INBOX_USAGE,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    db_flag(p)
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="RUN | ACTION RUN KEY ...")
    p.set_defaults(run=cmd_inbox)


def _log(args):
    from builder.owner.log import ConversationLog
    from builder.run import Run

    return ConversationLog.for_run(Run(args.run_dir).require().path, args.db)


def cmd_log_export(args) -> None:
    written = _log(args).export(args.out, args.format)
    print(f"{args.out}: {written} answers")


def cmd_log_prune(args) -> None:
    print(f"deleted {_log(args).prune(args.keep_days)} answers older than {args.keep_days} days")


def cmd_log_forget(args) -> None:
    print(f"deleted {_log(args).forget(args.customer)} answers of that customer")


# ---------------------------------------------------------------------------------------------
# builder inbox

INBOX_USAGE = """the owner's inbox: answers of the last 30 days that were declined, replaced by the
fact guard, marked 👎 by the customer, or came from an FAQ entry that covers the question poorly,
grouped by question.

  builder inbox RUN [--days N] [--db PATH|URL]       list the open groups, most asked first
  builder inbox answer RUN KEY "TEXT"                a new FAQ row: the group's question -> TEXT
  builder inbox map RUN KEY LINE                     the FAQ entry on LINE answers the group
  builder inbox decline RUN KEY                      declining was right; the group leaves

answer and map write RUN/inbox/faq.csv and swap the run's knowledge at once (a server that
follows it answers from it within seconds); the next training takes the rows with
`builder prepare FAQ --add RUN/inbox/faq.csv --out DIR`."""


def inbox_parser(action: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"builder inbox{' ' + action if action else ''}")
    p.add_argument("run_dir")
    if action:
        p.add_argument("key", help="the group's key, as `builder inbox RUN` lists it")
    if action == "answer":
        p.add_argument("text", help="what the bot should answer")
    if action == "map":
        p.add_argument("line", type=int, help="the FAQ entry's line in the FAQ file")
    p.add_argument("--days", type=int, default=30, help="how far back to look (default 30)")
    db_flag(p)
    return p


def cmd_inbox(args) -> None:
    action = args.words[0] if args.words and args.words[0] in INBOX_ACTIONS else None
    parsed = inbox_parser(action).parse_args(args.words[1:] if action else args.words)
    parsed.db = parsed.db or args.db
    INBOX_ACTIONS.get(action, inbox_list)(parsed)


def inbox_list(args) -> None:
    from builder.owner.inbox import inbox

    groups = inbox(args.run_dir, _log(args), days=args.days)
    if not groups:
        print(f"{args.run_dir}: nothing open in the last {args.days} days")
        return
    print(f"{len(groups)} open group{'s' if len(groups) > 1 else ''}, most asked first (answer, "
          "map or decline each by its key)")
    for g in groups:
        kinds = ", ".join(f"{k} {n}" for k, n in g.kinds.items())
        print(f"\n{g.key}  {g.count}x  last {g.last_seen:%Y-%m-%d %H:%M} UTC  ({kinds})")
        print(f"  Q: {g.question}")
        for other in g.questions[1:4]:
            print(f"     {other}")
        if len(g.questions) > 4:
            print(f"     ... {len(g.questions) - 4} more wordings")
        for said in g.answers[:2]:
            print(f"  bot: {_short(said)}")
        if g.best:
            where = f"FAQ line {g.best['line']}" if g.best["line"] else "an inbox row"
            print(f"  from {where}: {g.best['question']}")


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def inbox_answer(args) -> None:
    from builder.owner.inbox import answer

    done = answer(args.run_dir, _log(args), args.key, args.text, days=args.days)
    _print_update(args, done)
    if done.get("pairs"):
        print(f"{done['pairs']} preference pair(s) -> {args.run_dir}/inbox/pairs.jsonl "
              f"(builder prefer {args.run_dir} --pairs {args.run_dir}/inbox/pairs.jsonl "
              "--out RUN2)")
    print(f"next training: builder prepare FAQ --add {done['faq']} --out DIR")


def inbox_map(args) -> None:
    from builder.owner.inbox import map_to_entry

    _print_update(args, map_to_entry(args.run_dir, _log(args), args.key, args.line,
                                     days=args.days))


def inbox_decline(args) -> None:
    from builder.owner.inbox import decline_is_right

    decline_is_right(args.run_dir, _log(args), args.key, days=args.days)
    print(f"{args.key}: declining was right; it leaves the inbox")


def _print_update(args, done: dict) -> None:
    print(f"{args.key}: row {done['row']} in {done['faq']}; the knowledge has {done['entries']} "
          f"entries, updated in {done['seconds']:.1f} s (a server following {args.run_dir} "
          "answers from it within seconds)")


INBOX_ACTIONS = {"answer": inbox_answer, "map": inbox_map, "decline": inbox_decline}
