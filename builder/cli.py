"""The command line door: parse the arguments, call one library function, show the result.

    builder prepare data/sample_faq.csv --out runs/data
    builder push-data runs/data --repo OWNER/NAME
    builder --help

A `UserError` is printed as one line (no traceback) and exits with code 2.
"""

import argparse

import sys

from builder.errors import UserError


def cmd_prepare(args) -> None:
    from builder.data import prepare, summary

    report = prepare(
        args.faq_file, args.out, test_size=args.test_size, seed=args.seed,
        max_length=args.max_length,
    )
    print(summary(report, args.out))
    print(f"next: builder train {args.out} --out runs/NAME")


def cmd_push_data(args) -> None:
    from builder.hub import push_dataset

    result = push_dataset(args.dir, args.repo, private=args.private)
    state = "pushed" if result.changed else "already up to date (nothing pushed)"
    print(f"{result.repo_id}: {state} -> {result.url}")


def cmd_embedded(args) -> None:
    from builder.embedded import ensure_embedded_model

    print(ensure_embedded_model())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="builder",
        description="Build a Korean domain chatbot from a FAQ file: "
        "prepare -> train -> merge -> chat / app -> eval -> push.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("prepare", help="validate a FAQ CSV/TSV/XLSX and split it 9:1")
    p.add_argument("faq_file", help="the FAQ file (instruction,input,output or question,answer ...)")
    p.add_argument("--out", required=True, help="folder to write (complete or absent)")
    p.add_argument("--test-size", type=float, default=0.1, help="share held out for testing")
    p.add_argument("--seed", type=int, default=42, help="seed of the split")
    p.add_argument("--max-length", type=int, default=512,
                   help="training length in tokens; longer rows are reported")
    p.set_defaults(run=cmd_prepare)

    p = commands.add_parser("push-data", help="push a prepared dataset to the Hugging Face Hub")
    p.add_argument("dir", help="a folder written by `builder prepare`")
    p.add_argument("--repo", required=True, help="OWNER/NAME of the dataset repo")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.set_defaults(run=cmd_push_data)

    p = commands.add_parser("embedded", help="convert the embedded gemma-3-270m once, print its folder")
    p.set_defaults(run=cmd_embedded)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0



