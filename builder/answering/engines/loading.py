"""A run folder's engine, loaded with the run's settings: the transformers model (merged, or
base + adapter), the GGUF in llama.cpp, or a remote completion server; local engines share
their greedy answers (builder.answering.engines.shared).

    engine = load_engine(Run("runs/demo"), "auto")     # what load_chatbot puts in a Chatbot
"""

from pathlib import Path

from builder.errors import UserError
from builder.run import Run


def serving_rag(run: Run, settings: list[str] = ()):
    """The run's rag settings with `settings` (rag.KEY=VALUE) applied; None for a run whose
    template has no FAQ slot."""
    if not run.template().grounded:
        return None
    cfg = run.config()
    if settings:
        from builder.config import check, merge_into, parse_set

        data = parse_set(list(settings))
        if set(data) - {"rag"}:
            raise UserError(f"--set {', '.join(settings)}: only rag.* settings apply to a "
                            "trained run (the others are training's)")
        merge_into(cfg, data, "--set")
        check(cfg)
    return cfg.rag


def load_engine(run: Run, use: str = "auto", *, engine: str = "local",
                engine_model: str | None = None, device: str | None = None,
                gguf_file: str | Path | None = None, check: bool = False, rag=None,
                parallel: int | None = None):
    """The run's engine (see load_chatbot; `rag`: the settings it generates with, default the
    run's). With `check`, a function that loads it (taking `rag` and `parallel`), returned once
    the files it needs are found (so a missing model is said before the knowledge loads)."""
    local = engine == "local"
    weights = run.weights(use) if local and use != "gguf" else None
    gguf = (Path(gguf_file) if gguf_file else run.gguf()) if local and use == "gguf" else None
    if check:
        return lambda **later: load_engine(run, use, engine=engine, engine_model=engine_model,
                                           device=device, gguf_file=gguf_file, **later)
    template, meta = run.template(), run.meta()
    rag = rag if rag is not None else serving_rag(run)
    options = {"stop_markers": template.stop_markers,
               "repetition_penalty": rag.repetition_penalty if rag is not None else 1.0}
    if not local:
        import os

        from builder.answering.engines.remote import (ENGINE_API_KEY_ENV, RemoteEngine,
                                                      engine_model_name)

        if not engine.startswith(("http://", "https://")):
            raise UserError(f"--engine must be 'local' or a URL like http://HOST:PORT/v1, not "
                            f"{engine!r}")
        api_key = os.environ.get(ENGINE_API_KEY_ENV)
        return RemoteEngine(engine, engine_model or engine_model_name(engine, api_key),
                            api_key=api_key, end_ids=meta.get("end_token_ids") or [], **options)
    if use == "gguf":
        from builder.answering.engines.llamacpp import GgufEngine

        if parallel is not None:
            options["parallel"] = parallel
        return shared_answers(GgufEngine.load(gguf, end_ids=set(meta.get("end_token_ids") or []),
                                      **options), rag)
    from builder.answering.engines.transformers import TransformersEngine

    model_dir, adapter_dir = weights
    return shared_answers(TransformersEngine.load(
        model_dir, adapter_dir, device=device, end_ids=meta.get("end_token_ids") or [],
        # a config without max_position_embeddings: the length the run trained on
        context_length=meta.get("config", {}).get("model", {}).get("max_seq_length"),
        # a prompt without FAQ entries has no answer to copy: prompt lookup if grounded
        prompt_lookup_tokens=rag.prompt_lookup_tokens if rag is not None else 0,
        **options), rag)


def shared_answers(engine, rag):
    """A local engine whose greedy answers many customers share (rag.shared_answers kept;
    builder.answering.engines.shared), for a grounded run."""
    if rag is None or not rag.shared_answers:
        return engine
    from builder.answering.engines.shared import SharedAnswers

    return SharedAnswers(engine, size=rag.shared_answers)
