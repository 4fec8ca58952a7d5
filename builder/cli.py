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


def cmd_train(args) -> None:
    from builder.config import load_config
    from builder.train import train

    cfg = load_config(args.config, args.set)
    if args.backend:
        cfg.train.backend = args.backend
    run_dir = train(args.prepared_dir, args.out, cfg, resume=args.resume)
    print(f"next: builder merge {run_dir}")


def cmd_inspect(args) -> None:
    from builder.config import load_config
    from builder.train import inspect_example

    print(inspect_example(args.prepared_dir, load_config(args.config, args.set), args.index))


def cmd_merge(args) -> None:
    from builder.merge import merge

    merged = merge(args.run_dir, dtype=args.dtype)
    print(f"next: builder chat {args.run_dir}   (merged model: {merged})")


def cmd_plan(args) -> None:
    from builder.config import load_config
    from builder.plan import format_plan, plan

    print(format_plan(plan(load_config(args.config, args.set), device=args.device)))


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

    def config_flags(p):
        p.add_argument("--config", help="YAML config (see configs/); defaults otherwise")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key, e.g. train.lr=1e-4 (repeatable)")

    p = commands.add_parser("train", help="fine-tune with LoRA/QLoRA on a prepared folder")
    p.add_argument("prepared_dir", help="a folder written by `builder prepare`")
    p.add_argument("--out", required=True, help="the run folder to write")
    config_flags(p)
    p.add_argument("--backend", choices=["unsloth", "hf"], help="force a backend")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("inspect", help="show one tokenized example: masked prompt vs trained answer")
    p.add_argument("prepared_dir")
    config_flags(p)
    p.add_argument("--index", type=int, default=0, help="which training row")
    p.set_defaults(run=cmd_inspect)

    p = commands.add_parser("merge", help="merge a run's adapter into a 16-bit model (RUN_DIR/merged)")
    p.add_argument("run_dir")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="dtype of the saved merged weights (hf backend)")
    p.set_defaults(run=cmd_merge)

    p = commands.add_parser("plan", help="model shape, trainable LoRA parameters, memory estimate")
    config_flags(p)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where it would train")
    p.set_defaults(run=cmd_plan)

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



