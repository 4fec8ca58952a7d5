"""What each `builder` command does once its flags are parsed (builder/doors/cli.py): call one
library function, print the result and the next command to run."""

import sys
from pathlib import Path

from builder.errors import UserError


def cmd_prepare(args) -> None:
    from builder.data.prepare import prepare, summary

    report = prepare(
        args.faq_file, args.out, test_size=args.test_size, seed=args.seed,
        max_length=args.max_length, add=args.add,
    )
    print(summary(report, args.out))
    print(f"next: builder train {args.out} --out runs/NAME")


def cmd_push_data(args) -> None:
    from builder.deploy.hub import push_dataset

    result = push_dataset(args.dir, args.repo, private=args.private)
    state = "pushed" if result.changed else "already up to date (nothing pushed)"
    print(f"{result.repo_id}: {state} -> {result.url}")


def cmd_train(args) -> None:
    from builder.config import load_config
    from builder.training.sft import train

    cfg = load_config(args.config, args.set)
    if args.backend:
        cfg.train.backend = args.backend
    run_dir = train(args.prepared_dir, args.out, cfg, resume=args.resume)
    print(f"next: builder merge {run_dir}")


def cmd_inspect(args) -> None:
    from builder.config import load_config
    from builder.training.rows import inspect_example

    print(inspect_example(args.prepared_dir, load_config(args.config, args.set), args.index))


def cmd_index(args) -> None:
    from builder.answering.indexing import index_run

    index_run(args.run_dir, args.faq_file)
    print(f"next: builder ask {args.run_dir} \"...\" --sources   (no retraining needed)")


def cmd_merge(args) -> None:
    from builder.training.merge import merge

    merged = merge(args.run_dir, dtype=args.dtype)
    print(f"next: builder chat {args.run_dir}   (merged model: {merged})")


def cmd_prefer(args) -> None:
    from builder.training.prefer import prefer

    out = prefer(args.run_dir, args.out, pairs_file=args.pairs, method=args.method,
                 config_path=args.config, overrides=args.set)
    print(f"next: builder eval {out}   (pairs to inspect and edit: {out}/pairs.jsonl)")


def cmd_merge_models(args) -> None:
    from builder.training.merge_models import merge_models

    out = merge_models(args.run_dirs, args.out, method=args.method, weights=args.weights,
                       t=args.t, density=args.density, layers=args.layers)
    print(f"next: builder chat {out}")


def cmd_plan(args) -> None:
    from builder.config import load_config
    from builder.training.plan import format_plan, plan

    print(format_plan(plan(load_config(args.config, args.set), device=args.device)))


def generation_options(args) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
            "top_p": args.top_p}


def cmd_chat(args) -> None:
    from builder.answering.chatbot import load_chatbot
    from builder.doors.terminal import chat_loop
    from builder.owner.live import follow_model
    from builder.owner.log import ConversationLog

    bot = load_chatbot(args.run_dir, args.use, engine=args.engine, engine_model=args.engine_model,
                       faq_first=True)
    if not bot.trained:  # the run is still training: its model joins the chat when it is there
        follow_model(bot, args.run_dir, args.use)
    chat_loop(bot, options=generation_options(args),
              conversations=ConversationLog.for_run(args.run_dir, args.db))


def cmd_ask(args) -> None:
    from builder.answering.chatbot import FAQ_ONLY_NOTE, load_chatbot
    from builder.answering.guard import Reply
    from builder.doors.terminal import format_sources

    bot = load_chatbot(args.run_dir, args.use, engine=args.engine,
                       engine_model=args.engine_model, faq_first=True)
    reply = Reply()
    for delta in bot.stream(args.question, args.context, reply=reply, **generation_options(args)):
        print(delta, end="", flush=True)
    print()
    if args.sources and reply.sources:
        print(format_sources(reply))
    if reply.faq_only:
        print(FAQ_ONLY_NOTE, file=sys.stderr)


def cmd_eval(args) -> None:
    from builder.evaluation.evaluate import evaluate
    from builder.evaluation.report import format_summary

    judge = None
    if args.judge or args.judge_model:
        from builder.evaluation.judge import check_spec

        judge = check_spec(args.judge, args.judge_model, args.judge_api_key_env)
    report = evaluate(args.run_dir, data_dir=args.data, train_sample=args.train_sample,
                      max_new_tokens=args.max_new_tokens, limit=args.limit,
                      questions=args.questions, batch_size=args.batch_size, use=args.use,
                      engine=args.engine, engine_model=args.engine_model, judge=judge)
    print(format_summary(report))
    print(f"report: {args.run_dir}/eval/report.md, chart: {args.run_dir}/eval/chart.png")


def cmd_app(args) -> None:
    from builder.doors.page import launch

    launch(args.host, args.port, runs_root=args.runs_root, run_dir=args.run_dir,
           config_path=args.config, max_upload_mb=args.max_upload_mb, open_access=args.open,
           max_queue=args.max_queue, hub_login=args.hub_login, allowed_hosts=args.allowed_hosts,
           allow_private_endpoints=args.allow_private_endpoints,
           ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile, db=args.db)


def cmd_serve(args) -> None:
    from builder.doors.api import serve
    from builder.doors.shops import can_answer

    options = dict(host=args.host, port=args.port, engine=args.engine, api_key=args.api_key,
                   max_queue=args.max_queue, max_tokens_cap=args.max_tokens_cap,
                   concurrency=args.concurrency, use=args.use, engine_model=args.engine_model,
                   open_=args.open, db=args.db, channels=channel_settings(args),
                   settings=args.settings, parallel=args.parallel)
    one = args.run_dirs[0]
    if len(args.run_dirs) == 1 and not args.keys and (not Path(one).is_dir() or
                                                       can_answer(Path(one))):
        from builder.doors.shops import is_hub_repo

        if is_hub_repo(one):  # a pushed model: OWNER/NAME
            from builder.deploy.hub import pull_run

            one = pull_run(one)
        serve(one, warm=args.warm, shop=args.shop_name, **options)
        return
    from builder.doors.api_shops import serve_shops

    if args.warm or args.shop_name:
        raise UserError("--warm and --shop-name are for one run; a server of many shops loads "
                        "each shop on its first question, under its folder's name")
    serve_shops(args.run_dirs, keys_file=args.keys, memory_gb=args.memory_gb, **options)


def cmd_keys(args) -> None:
    from builder.doors.keys import add_key, read_keys, remove_key

    path = Path(args.file)
    if args.action == "list":
        for key in read_keys(path):
            print(f"{key['name']}: {', '.join(key['shops'])} (since {key.get('created', '?')})")
        return
    if not args.name:
        raise UserError(f"builder keys {args.action} FILE NAME: say which key")
    if args.action == "remove":
        remove_key(path, args.name)
        print(f"removed {args.name!r} from {path}; a running server refuses it from now on")
        return
    key = add_key(path, args.name, args.shops)
    print(key)
    print(f"(the key above is shown once: {path} keeps only its hash; {args.name!r} may ask "
          f"{', '.join(sorted(set(args.shops)))})", file=sys.stderr)


def channel_settings(args) -> dict:
    """The customer channels `builder serve` adds: {name: (mount, settings)}
    (builder.doors.channels)."""
    import os

    from builder.doors.channels import kakao, webchat

    settings = {}
    if args.web_chat:
        settings["web"] = (webchat.mount, {k: v for k, v in (("greeting", args.web_greeting),
                                                             ("examples", args.web_examples)) if v})
    if args.kakao:
        secret = os.environ.get("BUILDER_KAKAO_SECRET", "")
        if not secret:
            raise UserError("--kakao needs the skill URL's secret in $BUILDER_KAKAO_SECRET "
                            "(16-128 letters, digits, - or _; e.g. python -c 'import secrets; "
                            "print(secrets.token_urlsafe(24))')")
        settings["kakao"] = (kakao.mount, {"kakao_secret": secret,
                                           "kakao_budget_s": args.kakao_budget,
                                           "kakao_callback_hosts": args.kakao_callback_hosts or []})
    return settings


def cmd_export(args) -> None:
    from builder.deploy.export import export

    out = export(args.run_dir, args.quant, fmt=args.format, questions=args.questions,
                 force=args.force)
    print(f"next: builder chat {args.run_dir} --use gguf   (or: cd {out.parent} && ollama "
          f"create {Path(args.run_dir).resolve().name} -f Modelfile)")


def cmd_push_model(args) -> None:
    from builder.deploy.hub import push_model

    result = push_model(args.run_dir, args.repo, what=args.what, private=args.private)
    state = "pushed" if result.changed else "already up to date (nothing pushed)"
    print(f"{result.repo_id} ({args.what}): {state} -> {result.url}")


def cmd_generate(args) -> None:
    if args.docs and args.paraphrases:
        raise UserError("give documents (FAQ pairs -> --out) or --paraphrases PREPARED_DIR, "
                        "not both")
    if args.docs:
        from builder.data.faqgen import generate_from_docs, summary

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
    from builder.data.paraphrases import generate_paraphrases

    result = generate_paraphrases(args.paraphrases, args.endpoint, args.model, n=args.n,
                                  api_key_env=args.api_key_env, limit=args.limit)
    for reason in result.skipped:
        print(f"skipped {reason}")
    print(f"wrote {result.written} paraphrases for {result.questions - len(result.skipped)} of "
          f"{result.questions} questions -> {result.path}")


def cmd_embedded(args) -> None:
    from builder.embedded import ensure_embedded_model

    print(ensure_embedded_model())
