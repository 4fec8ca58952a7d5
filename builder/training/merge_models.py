"""Merging fine-tuned models with mergekit: several runs of one base become one run folder.

    builder merge-models runs/coffee runs/tea --method slerp --t 0.5 --out runs/shop
    builder merge-models runs/a runs/b runs/c --method ties --weights 1 1 0.5 --out runs/abc
    builder merge-models runs/shop --method dus --out runs/shop-deep    # needs training after

Inputs are the 16-bit merged/ models of the runs (`builder merge RUN` writes them), all from
the same base model with the same tokenizer. linear averages the weights; slerp interpolates
two models along the sphere (t = 0 is the first run, 1 the second); ties and dare_ties add each
run's changes to the common base, keeping the largest (`--density`) and resolving sign
conflicts (DARE drops changes at random and rescales). dus is SOLAR's depth up-scaling: two
overlapping layer ranges of one model stacked through mergekit's passthrough; such a model
needs further training before it answers well.

The output is a run folder like a trained one: merged/, template.yaml, knowledge/ and config.yaml
of the first run, and meta.json with the merge recipe, so chat, eval, serve, export and push
take it as it is.
"""

import hashlib
import json
import shutil
from pathlib import Path

import yaml

from builder.errors import UserError
from builder.run import staging_dir

METHODS = ("linear", "slerp", "ties", "dare_ties", "dus")
# files of the first run's merged/ that mergekit does not write (or writes from the base)
CARRIED = ("generation_config.json", "chat_template.jinja", "tokenizer.json",
           "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
DUS_NOTE = ("note: a depth up-scaled model repeats layers; like SOLAR it needs further training "
            "(builder train with model.name={merged}) before it answers well")


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def read_merged_run(run_dir: Path) -> dict:
    """The run's meta and merged/ config, or a UserError that says what to run."""
    merged = run_dir / "merged"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not (merged / "config.json").is_file():
        raise UserError(f"{merged}: missing; merge-models works on 16-bit merged models. "
                        f"Make it with `builder merge {run_dir}`")
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    config = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    return {"run": run_dir, "merged": merged, "meta": meta, "config": config,
            "tokenizer": _sha256(merged / "tokenizer.json") or _sha256(merged / "tokenizer.model")}


def check_compatible(runs: list[dict]) -> None:
    """Same base model (by meta and by shape) and the same tokenizer, or a UserError."""
    first = runs[0]
    shape_keys = ("architectures", "hidden_size", "num_hidden_layers", "vocab_size",
                  "intermediate_size", "num_attention_heads")
    for other in runs[1:]:
        a, b = first["meta"].get("base_model"), other["meta"].get("base_model")
        shape_a = {k: first["config"].get(k) for k in shape_keys}
        shape_b = {k: other["config"].get(k) for k in shape_keys}
        if (a and b and a != b) or shape_a != shape_b:
            raise UserError(
                f"different base models: {first['run']} was trained from {a or shape_a}, "
                f"{other['run']} from {b or shape_b}; merge only runs of the same base model")
        if first["tokenizer"] != other["tokenizer"]:
            raise UserError(
                f"different tokenizers: {first['merged']} and {other['merged']} do not hold the "
                "same tokenizer.json; the token ids would not mean the same thing. Merge runs "
                "trained with the same base model and tokenizer")


def recipe(runs: list[dict], method: str, *, weights=None, t: float = 0.5, density: float = 0.5,
           layers=None, dtype: str = "bfloat16") -> dict:
    """The mergekit YAML (as a dict) for the method."""
    paths = [str(r["merged"].resolve()) for r in runs]
    n_layers = runs[0]["config"]["num_hidden_layers"]
    if method == "dus":
        if len(runs) != 1:
            raise UserError("--method dus up-scales one run: give exactly one RUN_DIR")
        end, start = layers or (n_layers - n_layers // 4, n_layers // 4)
        if not (0 < end <= n_layers and 0 <= start < n_layers):
            raise UserError(f"--layers {end} {start}: the run has {n_layers} layers; give END "
                            f"in 1..{n_layers} and START in 0..{n_layers - 1}")
        return {"merge_method": "passthrough", "dtype": dtype, "slices": [
            {"sources": [{"model": paths[0], "layer_range": [0, end]}]},
            {"sources": [{"model": paths[0], "layer_range": [start, n_layers]}]}]}
    if len(runs) < 2:
        raise UserError(f"--method {method} merges two or more runs; give at least two RUN_DIRs")
    if method == "slerp":
        if len(runs) != 2:
            raise UserError("--method slerp interpolates exactly two runs; use linear or ties "
                            "for more")
        if not 0 <= t <= 1:
            raise UserError(f"--t {t}: give a value from 0 (the first run) to 1 (the second)")
        return {"merge_method": "slerp", "base_model": paths[0], "dtype": dtype,
                "parameters": {"t": t}, "slices": [{"sources": [
                    {"model": p, "layer_range": [0, n_layers]} for p in paths]}]}
    weights = weights or [1.0] * len(runs)
    if len(weights) != len(runs):
        raise UserError(f"--weights: give one weight per run ({len(runs)}), got {len(weights)}")
    if method == "linear":
        return {"merge_method": "linear", "dtype": dtype,
                "models": [{"model": p, "parameters": {"weight": w}} for p, w in zip(paths, weights)]}
    if not 0 < density <= 1:
        raise UserError(f"--density {density}: give a share above 0 and at most 1")
    base = runs[0]["meta"].get("base_model_path")
    if not base or not Path(base).is_dir():
        raise UserError(f"{runs[0]['run'] / 'meta.json'}: base model folder {base!r} not found; "
                        f"{method} adds each run's changes to the base model")
    return {"merge_method": method, "base_model": base, "dtype": dtype,
            "parameters": {"normalize": True},
            "models": [{"model": p, "parameters": {"weight": w, "density": density}}
                       for p, w in zip(paths, weights)]}


def _fix_layer_types(original):
    """mergekit 0.1.5 sets num_hidden_layers of an up-scaled model but keeps the base's
    per-layer `layer_types` (gemma 3: sliding / full attention), which transformers 5 refuses
    to save. Each output layer keeps the type of the layer it was copied from."""
    def out_config(config, arch_info, trust_remote_code=False):
        res = original(config, arch_info, trust_remote_code=trust_remote_code)
        types = getattr(res, "layer_types", None)
        if types and config.slices and len(types) != res.num_hidden_layers:
            res.layer_types = [types[i] for s in config.slices
                               for i in range(*s.sources[0].layer_range)]
        return res

    return out_config


def run_mergekit(config: dict, out: Path) -> None:
    try:
        import mergekit.merge as mk
        from mergekit.config import MergeConfiguration
    except ImportError:
        raise UserError("mergekit is not installed: pip install -c constraints/cpu.txt "
                        "'.[merge]'  (the constraint keeps the CPU torch)") from None
    original = mk._model_out_config
    mk._model_out_config = _fix_layer_types(original)
    try:
        mk.run_merge(MergeConfiguration.model_validate(config), str(out),
                     mk.MergeOptions(quiet=True, write_model_card=False, copy_tokenizer=True))
    finally:
        mk._model_out_config = original


def merge_models(run_dirs, out, *, method: str = "slerp", weights=None, t: float = 0.5,
                 density: float = 0.5, layers=None, log=print) -> Path:
    """Merge the runs' merged/ models into OUT (a run folder); returns OUT."""
    from importlib import metadata

    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    out = Path(out)
    runs = [read_merged_run(Path(r)) for r in run_dirs]
    if out.resolve() in {r["run"].resolve() for r in runs}:
        raise UserError(f"--out {out} is one of the runs being merged; give a new folder")
    if out.exists() and any(out.iterdir()) and not (out / "meta.json").is_file():
        raise UserError(f"{out} exists and is not a run folder; choose another --out")
    check_compatible(runs)
    first = runs[0]
    dtype = first["config"].get("dtype") or first["config"].get("torch_dtype") or "bfloat16"
    config = recipe(runs, method, weights=weights, t=t, density=density, layers=layers,
                    dtype=dtype)
    templates = {r["meta"].get("template_sha256") for r in runs}
    if len(templates) > 1:
        log(f"note: the runs were trained with different prompt templates; the merged run "
            f"uses the first run's ({first['meta'].get('template')})")

    # Merge into a staging folder, then put the run folder together
    out.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out, ".merging-")  # and a killed merge's go
    try:
        log(f"mergekit {config['merge_method']} of {len(runs)} run(s) -> {out / 'merged'} ...")
        run_mergekit(config, staging)
        for name in CARRIED:
            if (first["merged"] / name).is_file():
                shutil.copy(first["merged"] / name, staging / name)
        for name in ("knowledge", "merged", "adapter", "eval"):
            shutil.rmtree(out / name, ignore_errors=True)
        if (first["run"] / "knowledge").is_dir():
            shutil.copytree(first["run"] / "knowledge", staging / "knowledge")
            shutil.copytree(first["run"] / "knowledge", out / "knowledge")
        staging.rename(out / "merged")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for name in ("template.yaml", "config.yaml"):
        if (first["run"] / name).is_file():
            shutil.copy(first["run"] / name, out / name)
    merged_config = json.loads((out / "merged" / "config.json").read_text(encoding="utf-8"))
    meta = {**first["meta"], "stage": "merge-models", "backend": "mergekit",
            "merge_recipe": {
                "method": method, "runs": [str(r["run"].resolve()) for r in runs],
                "weights": weights, "t": t if method == "slerp" else None,
                "density": density if method in ("ties", "dare_ties") else None,
                "layers": merged_config.get("num_hidden_layers"),
                "needs_training": method == "dus",
                "mergekit": metadata.version("mergekit"), "mergekit_config": config}}
    (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2))
    (out / "merged" / "mergekit_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    log(f"merged ({method}) -> {out / 'merged'}: {merged_config.get('num_hidden_layers')} layers")
    if method == "dus":
        log(DUS_NOTE.format(merged=out / "merged"))
    return out
