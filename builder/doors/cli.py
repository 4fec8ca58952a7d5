"""The command line door: parse the arguments, call one library function, show the result.

    builder prepare data/sample_faq.csv --out runs/data
    builder push-data runs/data --repo OWNER/NAME
    builder --help

A `UserError` is printed as one line (no traceback) and exits with code 2.
"""

import argparse
import sys

from builder.doors.cli_owner import add_owner_commands, db_flag
from builder.doors.commands import (
    cmd_app,
    cmd_ask,
    cmd_chat,
    cmd_embedded,
    cmd_eval,
    cmd_export,
    cmd_generate,
    cmd_index,
    cmd_inspect,
    cmd_keys,
    cmd_merge,
    cmd_merge_models,
    cmd_plan,
    cmd_prefer,
    cmd_prepare,
    cmd_push_data,
    cmd_push_model,
    cmd_serve,
    cmd_train,
)
from builder.errors import UserError


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
    p.add_argument("--add", action="append", default=[], metavar="FILE",
                   help="another file's rows after the FAQ's, through the same checks, e.g. "
                   "the inbox's answers RUN/inbox/faq.csv (repeatable)")
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
        p.add_argument("--engine", default="local",
                       help="local (in-process model) or the URL of an OpenAI-compatible "
                       "completion server, e.g. http://127.0.0.1:8001/v1 (vLLM, llama.cpp, "
                       "Ollama, TGI)")
        p.add_argument("--engine-model",
                       help="model name at --engine URL (default: the first it lists)")

    def generation_flags(p):
        use_flag(p)
        p.add_argument("--max-new-tokens", type=int, default=256)
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        p.add_argument("--top-p", type=float, default=0.9)

    p = commands.add_parser("chat", help="chat with a trained run in the terminal (exit / quit / 종료)")
    p.add_argument("run_dir")
    generation_flags(p)
    db_flag(p)
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
                   help="your own questions: columns question, expected (empty = must decline; "
                   "'|' between facts all needed), kind (paraphrase / vocabulary / follow_up / "
                   "two_entry / off_topic / unanswerable / near_miss), line (FAQ lines that "
                   "answer it), earlier (a follow-up's first question)")
    p.add_argument("--batch-size", type=int, default=8, help="answers generated together")
    p.add_argument("--judge", metavar="URL", help="an OpenAI-compatible endpoint (…/v1) whose "
                   "model grades every answer (faithful to the FAQ entries, helpful) and compares "
                   "the fine-tuned and base answers")
    p.add_argument("--judge-model", metavar="NAME", help="the judge's model name")
    p.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the judge's API key (never printed)")
    use_flag(p)
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
                   "reaches it can upload FAQ files, train, chat with every run in --runs-root "
                   "and push them with a token they type (not update a run's FAQ, not use your "
                   "Hub login); the traffic is plain http, so serve it behind a TLS proxy or "
                   "with --ssl-certfile/--ssl-keyfile")
    p.add_argument("--allow-private-endpoints", action="store_true",
                   help="let the document generator post to this machine and the private "
                   "network (a local vLLM, Ollama or llama.cpp server); without it a visitor "
                   "cannot make the page send requests to loopback, private or link-local "
                   "addresses")
    p.add_argument("--ssl-certfile", metavar="PEM", help="serve https with this certificate")
    p.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key")
    p.add_argument("--hub-login", action="store_true",
                   help="an empty token field on the 배포 tab pushes with HF_TOKEN or your saved "
                   "`hf auth login`: anyone who reaches the page (through a proxy or a tunnel on "
                   "this machine too) can then push with your login; refused with --open. "
                   "Without it the token field is required")
    p.add_argument("--allowed-host", action="append", default=[], dest="allowed_hosts",
                   metavar="NAME[:PORT]",
                   help="another host name the page answers to: the name a reverse proxy "
                   "forwards, or the machine's name on the network (repeatable). Without it only "
                   "127.0.0.1, localhost, --host and, with --host 0.0.0.0, IP addresses are "
                   "answered, so no web page can reach it through DNS rebinding")
    db_flag(p)
    p.set_defaults(run=cmd_app)

    p = commands.add_parser("serve", help="an OpenAI-compatible API over a run's chatbot "
                            "(/v1/chat/completions, /v1/models, /health), or over many shops")
    p.add_argument("run_dirs", nargs="+", metavar="RUN",
                   help="a run folder; several, or a folder of runs (every run in it), or a "
                   "pushed model repo OWNER/NAME: one server for many shops, the request's "
                   "`model` picks the shop")
    p.add_argument("--keys", metavar="FILE", help="many shops: the API keys file (`builder "
                   "keys add`), each key limited to its shops")
    p.add_argument("--memory-gb", type=float, metavar="GB", help="many shops: the models kept "
                   "in memory (least recently asked dropped first; default half the memory)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="key clients must send as 'Authorization: Bearer KEY' "
                   "(default: $BUILDER_API_KEY; prefer it, a flag shows in the process list)")
    p.add_argument("--max-queue", type=int, default=32,
                   help="requests that may wait for the engine; more get 429 + Retry-After")
    p.add_argument("--max-tokens-cap", type=int, default=512,
                   help="the largest max_tokens a request may ask for")
    p.add_argument("--concurrency", type=int,
                   help="answers generated at once (default: --parallel with --use gguf, 1 "
                   "with the transformers engine, 8 with an engine URL)")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="with --use gguf: answers generated together in one llama.cpp batch "
                   "(default 8 with a GPU build of llama.cpp; 1 on CPU, where batching measured "
                   "slower)")
    p.add_argument("--set", action="append", default=[], metavar="rag.KEY=VALUE",
                   dest="settings", help="an answering setting for this server only, e.g. "
                   "rag.shared_answers=0 or rag.prompt_lookup_tokens=0 (repeatable)")
    p.add_argument("--open", action="store_true",
                   help="off loopback, serve without an API key: anyone who reaches the port "
                   "can ask (without it, serving off loopback needs $BUILDER_API_KEY)")
    p.add_argument("--warm", action="store_true",
                   help="with --use gguf: read every FAQ entry once before serving, so the "
                   "first answer from each starts sooner (about 0.15 s an entry on 2 cores)")
    p.add_argument("--shop-name", metavar="NAME",
                   help="the shop's name as customers know it (web chat title, greeting); "
                   "default: the run folder's name")
    p.add_argument("--web-chat", action="store_true",
                   help="also serve the customers' web chat at /chat and the widget for the "
                   "shop's own site at /widget.js (open to anyone who reaches the server, as a "
                   "shop's chat is; answers go through the same queue)")
    p.add_argument("--web-greeting", metavar="TEXT", help="the web chat's first message")
    p.add_argument("--web-example", action="append", metavar="QUESTION", dest="web_examples",
                   help="an example question under the greeting (repeatable; default: the "
                   "FAQ's first three)")
    p.add_argument("--kakao", action="store_true",
                   help="answer a KakaoTalk channel as a Kakao i Open Builder skill at "
                   "/kakao/skill/$BUILDER_KAKAO_SECRET (the secret path is the only protection "
                   "Kakao allows: 16-128 letters, digits, - or _)")
    p.add_argument("--kakao-budget", type=float, default=4.0, metavar="SECONDS",
                   help="seconds a KakaoTalk answer may take before the best FAQ entry's own "
                   "answer is given (Kakao waits 5)")
    p.add_argument("--kakao-callback-host", action="append", metavar="ORIGIN",
                   dest="kakao_callback_hosts",
                   help="also send callback answers to this origin, e.g. http://127.0.0.1:9000 "
                   "(for testing; Kakao's own are https://*.kakao.com)")
    use_flag(p)
    db_flag(p)
    p.set_defaults(run=cmd_serve)

    p = commands.add_parser("keys", help="API keys for a server of many shops: add (prints "
                            "the key once), list, remove")
    p.add_argument("action", choices=["add", "list", "remove"])
    p.add_argument("file", help="the keys file (JSON of the keys' hashes)")
    p.add_argument("name", nargs="?", help="who uses the key (add, remove)")
    p.add_argument("--shop", action="append", default=[], dest="shops",
                   help="a shop the key may ask for (repeatable; '*' for every shop)")
    p.set_defaults(run=cmd_keys)

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
    add_owner_commands(commands)
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


