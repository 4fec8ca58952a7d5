"""The owner's commands: the conversation log (`builder log`) and the inbox (`builder inbox`).

    builder log export runs/demo --out answers.jsonl        # or --format csv (for Excel)
    builder log prune runs/demo --keep-days 90              # delete answers older than 90 days
    builder log forget runs/demo --customer ID              # one customer's conversations
"""

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
