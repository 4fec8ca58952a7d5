"""A merged model as a GGUF file: llama.cpp's own converter (from the llama-cpp-python sdist,
with its vendored gguf-py), a staging copy with the tokenizer llama.cpp needs, and quantizing.

    staging = stage(merged_dir, tmp / "model", template)   # tokenizer.model rebuilt, chat template
    convert(staging, out, "f16")                           # or q8_0; q4_k_m via quantize()

Gemma's tokenizer saved by transformers 5 has no tokenizer.model, and the converter then writes
a gpt2-style vocabulary that prints <0xEB>... for rare Hangul: `stage` rebuilds it in the
staging copy, never in the model folder. The sdist is unpacked only when its sha256 is the one
pinned here (`SDIST_SHA256`, PyPI's for that release), downloaded or given."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from builder.errors import UserError

LLAMA_CPP_VERSION = "0.3.36"
# PyPI's sha256 of llama_cpp_python-0.3.36.tar.gz: the converter runs as this user, so a
# tampered or swapped download must never be unpacked
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_ENV = "BUILDER_LLAMA_CPP_SDIST"
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


def converter_dir(log=print) -> Path:
    """$BUILDER_CACHE/llama.cpp-convert-VERSION with the converter, unpacked on first use."""
    from builder.embedded import cache_root

    target = cache_root() / f"llama.cpp-convert-{LLAMA_CPP_VERSION}"
    if all((target / part).exists() for part in CONVERTER_PARTS):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".llama-cpp-sdist-", dir=target.parent) as tmp:
        sdist = os.environ.get(SDIST_ENV) or _download_sdist(Path(tmp), log)
        if not Path(sdist).is_file():
            raise UserError(f"${SDIST_ENV}={sdist}: no such file; point it at "
                            f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz")
        check_sdist(Path(sdist))
        staging = Path(tmp) / "converter"
        prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].split("/")[0] in CONVERTER_PARTS
                       and (m.isfile() or m.isdir())]
            if not members:
                raise UserError(f"{sdist}: no {prefix}convert_hf_to_gguf.py inside; use the "
                                f"llama-cpp-python {LLAMA_CPP_VERSION} sdist")
            for member in members:
                member.name = member.name[len(prefix):]
            tar.extractall(staging, members=members, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    log(f"llama.cpp converter unpacked to {target}")
    return target


def check_sdist(sdist: Path) -> None:
    """Refuse an sdist whose bytes are not the pinned release's."""
    digest = hashlib.sha256()
    with sdist.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    if digest.hexdigest() != SDIST_SHA256:
        raise UserError(f"{sdist}: its sha256 is {digest.hexdigest()}, not {SDIST_SHA256} "
                        f"(llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz from PyPI), so it was not "
                        f"unpacked; download that file again from pypi.org"
                        f"{f' and point ${SDIST_ENV} at it' if os.environ.get(SDIST_ENV) else ''}")


def _download_sdist(folder: Path, log) -> str:
    log(f"downloading the llama-cpp-python {LLAMA_CPP_VERSION} sdist once, for llama.cpp's "
        "converter ...")
    # pip refuses a file whose sha256 differs too (--require-hashes takes it from a file)
    pinned = folder / "requirements.txt"
    pinned.write_text(f"llama-cpp-python=={LLAMA_CPP_VERSION} --hash=sha256:{SDIST_SHA256}\n",
                      encoding="utf-8")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
               "--no-deps", "--require-hashes", "--dest", str(folder), "-r", str(pinned)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    found = sorted(folder.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"could not download llama-cpp-python {LLAMA_CPP_VERSION}'s sdist for "
                        f"the GGUF converter ({last}); download it where PyPI is reachable "
                        f"(pip download --no-binary :all: --no-deps llama-cpp-python=="
                        f"{LLAMA_CPP_VERSION}) and set ${SDIST_ENV} to the .tar.gz")
    return str(found[0])


def needs_sentencepiece(tokenizer_json: dict) -> bool:
    """A SentencePiece-style BPE (byte fallback, spaces as '▁'; gemma, Llama-2, Mistral), whose
    converter path wants tokenizer.model; byte-level BPEs (Llama-3, Qwen) do not."""
    model = tokenizer_json.get("model") or {}
    normalizer = json.dumps(tokenizer_json.get("normalizer"), ensure_ascii=False)
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and "▁" in normalizer


def sentencepiece_model(tokenizer_json: dict) -> tuple[bytes, dict]:
    """(tokenizer.model bytes, added_tokens.json) rebuilt from a tokenizer.json.

    Scores fall with the id (SentencePiece BPE merges the highest-scoring pair first, and these
    vocabularies are ordered by merge priority); special added tokens are CONTROL, other added
    tokens USER_DEFINED (and listed in added_tokens.json, which the converter reads for them),
    <0xNN> are BYTE. Spaces are '▁', nothing is prefixed or collapsed, as in tokenizer.json."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    vocab = tokenizer_json["model"]["vocab"]
    added = {a["id"]: a for a in tokenizer_json.get("added_tokens", [])}
    piece_type = pb.ModelProto.SentencePiece
    model = pb.ModelProto()
    spec = model.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = pb.TrainerSpec.BPE, len(vocab), True
    for name, field in (("<unk>", "unk_id"), ("<bos>", "bos_id"), ("<eos>", "eos_id"),
                        ("<pad>", "pad_id"), ("<s>", "bos_id"), ("</s>", "eos_id")):
        if name in vocab:
            setattr(spec, field, vocab[name])
    norm = model.normalizer_spec
    norm.name, norm.add_dummy_prefix = "identity", False
    norm.remove_extra_whitespaces, norm.escape_whitespaces = False, True
    user_defined = {}
    byte = re.compile(r"^<0x[0-9A-F]{2}>$")
    for piece, token_id in sorted(vocab.items(), key=lambda item: item[1]):
        entry = model.pieces.add()
        entry.piece, entry.score = piece, 0.0
        info = added.get(token_id)
        if token_id == spec.unk_id:
            entry.type = piece_type.UNKNOWN
        elif info is not None and info.get("special"):
            entry.type = piece_type.CONTROL
        elif info is not None:
            entry.type = piece_type.USER_DEFINED
            user_defined[piece] = token_id
        elif byte.match(piece):
            entry.type = piece_type.BYTE
        else:
            entry.type, entry.score = piece_type.NORMAL, -float(token_id)
    return model.SerializeToString(), user_defined


def stage(merged_dir: Path, staging: Path, template) -> Path:
    """The folder the converter reads: weights and configs linked, tokenizer files copied,
    chat_template.jinja written, tokenizer.model rebuilt where needed."""
    from builder.training.merge import chat_template

    staging.mkdir(parents=True, exist_ok=True)
    for path in merged_dir.iterdir():
        if path.suffix == ".safetensors" or path.name in (
                "config.json", "generation_config.json", "model.safetensors.index.json"):
            (staging / path.name).symlink_to(path.resolve())
        elif path.name.startswith(("tokenizer", "special_tokens_map", "added_tokens")):
            shutil.copy(path, staging / path.name)
    (staging / "chat_template.jinja").write_text(chat_template(template), encoding="utf-8")
    tokenizer_file = staging / "tokenizer.json"
    if not (staging / "tokenizer.model").is_file() and tokenizer_file.is_file():
        tokenizer_json = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        if needs_sentencepiece(tokenizer_json):
            model, user_defined = sentencepiece_model(tokenizer_json)
            (staging / "tokenizer.model").write_bytes(model)
            (staging / "added_tokens.json").write_text(
                json.dumps(user_defined, ensure_ascii=False), encoding="utf-8")
    return staging


def convert(staging: Path, out: Path, outtype: str, log=print) -> None:
    """llama.cpp's converter: staging folder -> out (.gguf) at outtype (f16, q8_0, ...)."""
    script = converter_dir(log) / "convert_hf_to_gguf.py"
    command = [sys.executable, str(script), str(staging), "--outfile", str(out),
               "--outtype", outtype]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # its own gguf-py
    done = subprocess.run(command, check=False, capture_output=True, text=True,
                          env=env)
    if done.returncode != 0 or not out.is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise UserError(f"llama.cpp's converter failed on {staging.name} (exit "
                        f"{done.returncode}):\n{tail}")


def quantize(source: Path, out: Path, quant: str) -> None:
    """`llama_model_quantize` (llama.cpp's own k-quants): source GGUF -> out at quant."""
    from builder.answering.engines.llamacpp import import_llama

    llama_cpp = import_llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = os.cpu_count() or 1
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if code != 0 or not out.is_file():
        raise UserError(f"llama.cpp could not quantize {source.name} to {quant} (code {code})")
