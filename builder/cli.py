"""The command line door: parse the arguments, call one library function, show the result.

    builder prepare data/sample_faq.csv --out runs/data
    builder push-data runs/data --repo OWNER/NAME
    builder --help

A `UserError` is printed as one line (no traceback) and exits with code 2.
"""

import argparse
import sys
from pathlib import Path

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


def cmd_index(args) -> None:
    from builder.knowledge import index_run

    index_run(args.run_dir, args.faq_file)
    print(f"next: builder ask {args.run_dir} \"...\" --sources   (no retraining needed)")


def cmd_merge(args) -> None:
    from builder.merge import merge

    merged = merge(args.run_dir, dtype=args.dtype)
    print(f"next: builder chat {args.run_dir}   (merged model: {merged})")


def cmd_prefer(args) -> None:
    from builder.prefer import prefer

    out = prefer(args.run_dir, args.out, pairs_file=args.pairs, method=args.method,
                 config_path=args.config, overrides=args.set)
    print(f"next: builder eval {out}   (pairs to inspect and edit: {out}/pairs.jsonl)")


def cmd_merge_models(args) -> None:
    from builder.mergemodels import merge_models

    out = merge_models(args.run_dirs, args.out, method=args.method, weights=args.weights,
                       t=args.t, density=args.density, layers=args.layers)
    print(f"next: builder chat {out}")


def cmd_plan(args) -> None:
    from builder.config import load_config
    from builder.plan import format_plan, plan

    print(format_plan(plan(load_config(args.config, args.set), device=args.device)))


def generation_options(args) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
            "top_p": args.top_p}


def cmd_chat(args) -> None:
    from builder.chat import chat_loop
    from builder.llamacpp import load_chatbot

    chat_loop(load_chatbot(args.run_dir, args.use))


def cmd_ask(args) -> None:
    from builder.chat import Reply, format_sources
    from builder.llamacpp import load_chatbot

    bot = load_chatbot(args.run_dir, args.use)
    reply = Reply()
    for delta in bot.stream(args.question, args.context, reply=reply, **generation_options(args)):
        print(delta, end="", flush=True)
    print()
    if args.sources and reply.sources:
        print(format_sources(reply))


def cmd_eval(args) -> None:
    from builder.evaluate import evaluate, format_summary

    report = evaluate(args.run_dir, data_dir=args.data, train_sample=args.train_sample,
                      max_new_tokens=args.max_new_tokens, limit=args.limit,
                      questions=args.questions, batch_size=args.batch_size)
    print(format_summary(report))
    print(f"report: {args.run_dir}/eval/report.md, chart: {args.run_dir}/eval/chart.png")


def cmd_app(args) -> None:
    from builder.webapp import launch

    launch(args.host, args.port, runs_root=args.runs_root, run_dir=args.run_dir,
           config_path=args.config, max_upload_mb=args.max_upload_mb, open_access=args.open,
           max_queue=args.max_queue)


def cmd_serve(args) -> None:
    from builder.serve import serve

    serve(args.run_dir, host=args.host, port=args.port, engine=args.engine, api_key=args.api_key,
          max_queue=args.max_queue, max_tokens_cap=args.max_tokens_cap,
          concurrency=args.concurrency, use=args.use, engine_model=args.engine_model,
          warm=args.warm)


def cmd_export(args) -> None:
    from builder.export import export

    out = export(args.run_dir, args.quant, fmt=args.format, questions=args.questions,
                 force=args.force)
    print(f"next: builder chat {args.run_dir} --use gguf   (or: cd {out.parent} && ollama "
          f"create {Path(args.run_dir).resolve().name} -f Modelfile)")


def cmd_push_model(args) -> None:
    from builder.hub import push_model

    result = push_model(args.run_dir, args.repo, what=args.what, private=args.private)
    state = "pushed" if result.changed else "already up to date (nothing pushed)"
    print(f"{result.repo_id} ({args.what}): {state} -> {result.url}")


def cmd_generate(args) -> None:
    if args.docs and args.paraphrases:
        raise UserError("give documents (FAQ pairs -> --out) or --paraphrases PREPARED_DIR, "
                        "not both")
    if args.docs:
        from builder.faqgen import generate_from_docs, summary

        if not args.out:
            raise UserError("give --out FILE.csv for the generated FAQ, e.g. --out faq.csv")
        result = generate_from_docs(
            args.docs, args.out, endpoint=args.endpoint, model=args.model, rows=args.rows,
            chunk_tokens=args.chunk_tokens, api_key_env=args.api_key_env, dry_run=args.dry_run,
            timeout_s=args.timeout, max_tokens=args.max_tokens)
        print(summary(result))
        return
    if not args.paraphrases:
        raise UserError("give documents to turn into FAQ pairs (builder generate DOCS... --out "
                        "faq.csv) or --paraphrases PREPARED_DIR")
    if not args.endpoint or not args.model:
        raise UserError("--paraphrases needs --endpoint URL and --model NAME")
    from builder.generate import generate_paraphrases

    result = generate_paraphrases(args.paraphrases, args.endpoint, args.model, n=args.n,
                                  api_key_env=args.api_key_env, limit=args.limit)
    for reason in result.skipped:
        print(f"skipped {reason}")
    print(f"wrote {result.written} paraphrases for {result.questions - len(result.skipped)} of "
          f"{result.questions} questions -> {result.path}")


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

    p = commands.add_parser("prepare", help="validate a FAQ CSV/TSV/XLSX/JSON/JSONL file or a "
                            "folder of them, and split it 9:1")
    p.add_argument("faq_file", help="the FAQ file (instruction,input,output or question,answer "
                   "...; JSON/JSONL also Dolly or ShareGPT) or a folder read recursively")
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

    p = commands.add_parser("push-model", help="push a run's merged model or adapter to the Hub")
    p.add_argument("run_dir")
    p.add_argument("--repo", required=True, help="OWNER/NAME of the model repo")
    p.add_argument("--what", choices=["merged", "adapter"], default="merged")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.set_defaults(run=cmd_push_model)

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

    p = commands.add_parser("index", help="replace a run's FAQ knowledge from an updated FAQ "
                            "file, without retraining")
    p.add_argument("run_dir", help="a run folder written by `builder train`")
    p.add_argument("faq_file", help="the updated FAQ file (same formats and checks as prepare)")
    p.set_defaults(run=cmd_index)

    p = commands.add_parser("merge", help="merge a run's adapter into a 16-bit model (RUN_DIR/merged)")
    p.add_argument("run_dir")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="dtype of the saved merged weights (hf backend)")
    p.set_defaults(run=cmd_merge)

    p = commands.add_parser("prefer", help="preference tuning (DPO/ORPO) on top of a trained "
                            "run: grounded answers over invented ones")
    p.add_argument("run_dir", help="a finished run folder written by `builder train`")
    p.add_argument("--out", required=True, help="the new run folder to write")
    p.add_argument("--pairs", metavar="FILE", help="prompt,chosen,rejected CSV or JSONL (prompt = "
                   "the question; optional context); default: built from the run's own answers")
    p.add_argument("--method", choices=["dpo", "orpo"], help="default: prefer.method (dpo)")
    config_flags(p)
    p.set_defaults(run=cmd_prefer)

    p = commands.add_parser("merge-models", help="merge the merged/ models of runs on the same "
                            "base with mergekit (linear, slerp, ties, dare_ties, dus)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folders with merged/ (the first is the base of slerp/ties/dus)")
    p.add_argument("--out", required=True, help="the merged run folder to write")
    p.add_argument("--method", choices=["linear", "slerp", "ties", "dare_ties", "dus"],
                   default="slerp")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per run (linear, ties, "
                   "dare_ties); default equal")
    p.add_argument("--t", type=float, default=0.5,
                   help="slerp: 0 = the first run, 1 = the second")
    p.add_argument("--density", type=float, default=0.5,
                   help="ties/dare_ties: share of each run's changes kept")
    p.add_argument("--layers", type=int, nargs=2, metavar=("END", "START"),
                   help="dus: layers [0, END) then [START, n) of the run (default: SOLAR's "
                   "cut, n - n/4 and n/4)")
    p.set_defaults(run=cmd_merge_models)

    p = commands.add_parser("export", help="a run's merged model as GGUF (llama.cpp, Ollama) "
                            "with a Modelfile, its answers checked against the merged model's")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=["gguf"], default="gguf")
    p.add_argument("--quant", choices=["f16", "q8_0", "q4_k_m"], default="f16",
                   help="f16: the same answers; q8_0: half the size; q4_k_m: a quarter, "
                   "breaks small models (refused unless --force)")
    p.add_argument("--questions", type=int, default=5, help="FAQ questions asked of both")
    p.add_argument("--force", action="store_true",
                   help="keep a quant whose answers break, with a warning")
    p.set_defaults(run=cmd_export)

    p = commands.add_parser("plan", help="model shape, trainable LoRA parameters, memory estimate")
    config_flags(p)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where it would train")
    p.set_defaults(run=cmd_plan)

    def use_flag(p):
        p.add_argument("--use", choices=["auto", "merged", "adapter", "gguf"], default="auto",
                       help="merged model (auto when present), base model + adapter, or the "
                       "GGUF of `builder export` through llama.cpp")

    def generation_flags(p):
        use_flag(p)
        p.add_argument("--max-new-tokens", type=int, default=256)
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        p.add_argument("--top-p", type=float, default=0.9)

    p = commands.add_parser("chat", help="chat with a trained run in the terminal (exit / quit / 종료)")
    p.add_argument("run_dir")
    use_flag(p)
    p.set_defaults(run=cmd_chat)

    p = commands.add_parser("ask", help="one answer from a trained run, for scripts")
    p.add_argument("run_dir")
    p.add_argument("question")
    p.add_argument("--context", default="", help="optional context (the input column)")
    p.add_argument("--sources", action="store_true",
                   help="also print the FAQ entries the answer came from (with their rows)")
    generation_flags(p)
    p.set_defaults(run=cmd_ask)

    p = commands.add_parser("eval", help="score base vs tuned answers on the test split")
    p.add_argument("run_dir")
    p.add_argument("--data", help="prepared folder (default: the one the run trained on)")
    p.add_argument("--train-sample", type=int, default=20,
                   help="training questions also asked, as a memorisation check")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--limit", type=int, help="only the first N test questions")
    p.add_argument("--questions", metavar="CSV",
                   help="your own questions: columns question, expected (empty = must decline), "
                   "kind (paraphrase / off_topic / unanswerable), line (FAQ line that answers it)")
    p.add_argument("--batch-size", type=int, default=8, help="answers generated together")
    p.set_defaults(run=cmd_eval)

    p = commands.add_parser("app", help="the Gradio page: upload, train, chat, publish")
    p.add_argument("--run", dest="run_dir", help="a run folder to chat with first")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--runs-root", default="runs", help="where new data and runs are written")
    p.add_argument("--config", default="configs/embedded-cpu.yaml", help="training config")
    p.add_argument("--max-upload-mb", type=float, default=20, help="largest FAQ file accepted")
    p.add_argument("--max-queue", type=int, default=20,
                   help="requests that may wait; more are told to retry")
    p.add_argument("--open", action="store_true",
                   help="off loopback, serve without a login ($BUILDER_APP_PASSWORD): anyone who "
                   "reaches it can train and chat")
    p.set_defaults(run=cmd_app)

    p = commands.add_parser("serve", help="an OpenAI-compatible API over a run's chatbot "
                            "(/v1/chat/completions, /v1/models, /health)")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--engine", default="local",
                   help="local (in-process model) or the URL of an OpenAI-compatible completion "
                   "server, e.g. http://127.0.0.1:8001/v1 (vLLM, llama.cpp, Ollama, TGI)")
    p.add_argument("--engine-model",
                   help="model name at --engine URL (default: the first it lists)")
    p.add_argument("--api-key", help="key clients must send as 'Authorization: Bearer KEY' "
                   "(default: $BUILDER_API_KEY; prefer it, a flag shows in the process list)")
    p.add_argument("--max-queue", type=int, default=8,
                   help="requests that may wait for the engine; more get 429 + Retry-After")
    p.add_argument("--max-tokens-cap", type=int, default=512,
                   help="the largest max_tokens a request may ask for")
    p.add_argument("--concurrency", type=int,
                   help="answers generated at once (default 1 local, 8 with an engine URL)")
    p.add_argument("--warm", action="store_true",
                   help="with --use gguf: read every FAQ entry once before serving, so the "
                   "first answer from each starts sooner (about 0.15 s an entry on 2 cores)")
    use_flag(p)
    p.set_defaults(run=cmd_serve)

    p = commands.add_parser("generate", help="with an OpenAI-compatible chat endpoint: FAQ "
                            "pairs from the shop's documents (DOCS... --out faq.csv), or "
                            "paraphrases of the training questions (--paraphrases PREPARED_DIR)")
    p.add_argument("docs", nargs="*", metavar="DOCS",
                   help=".txt .md .html .pdf .docx files or folders of them")
    p.add_argument("--out", help="the FAQ CSV to write (instruction,input,output,source)")
    p.add_argument("--paraphrases", metavar="PREPARED_DIR",
                   help="a folder written by `builder prepare`; only its train.csv is read")
    p.add_argument("--endpoint",
                   help="e.g. https://api.openai.com/v1, http://127.0.0.1:8000/v1 (vLLM, "
                   "llama.cpp's llama-server), http://127.0.0.1:11434/v1 (Ollama)")
    p.add_argument("--model", help="model name the endpoint serves")
    p.add_argument("--rows", type=int, help="documents: about this many rows in all "
                   "(default: one per ~120 characters of text)")
    p.add_argument("--chunk-tokens", type=int, default=400,
                   help="documents: estimated tokens of text per request")
    p.add_argument("--dry-run", action="store_true", help="documents: print the chunks, the "
                   "requests and an estimated token count; send nothing")
    p.add_argument("--timeout", type=float, default=120,
                   help="documents: seconds to wait for one reply")
    p.add_argument("--max-tokens", type=int, help="documents: the longest reply asked for, in "
                   "tokens (default: the server's limit)")
    p.add_argument("--n", type=int, default=3, help="paraphrases per question")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (sent only when set)")
    p.add_argument("--limit", type=int, help="only the first N questions (a trial run)")
    p.set_defaults(run=cmd_generate)

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



