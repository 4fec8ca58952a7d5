"""The remote engine: an OpenAI-compatible completion server (vLLM, llama.cpp's server, Ollama,
TGI) generates; the builder renders the prompt and asks only for its completion.

    builder serve runs/NAME --engine http://GPU-HOST:8001/v1
    builder eval runs/NAME --engine http://GPU-HOST:8001/v1

POST URL/completions, streamed, with the template's stop markers; the server adds <bos>, as
training did. The prompt is sent whole (the server cuts nothing: a prompt over its context is
its error). $BUILDER_ENGINE_API_KEY is sent as a Bearer token when set.
"""

import json
import threading
from collections.abc import Iterator
from contextlib import closing

from builder.answering.decoding import answer_deltas
from builder.errors import UserError

ENGINE_API_KEY_ENV = "BUILDER_ENGINE_API_KEY"  # sent to an --engine URL that wants one


class EngineError(Exception):
    """The completion server failed or answered an error."""


def engine_model_name(url: str, api_key: str | None = None) -> str:
    """The first model the completion server lists (GET URL/models)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/models", headers=headers, timeout=10.0)
        response.raise_for_status()
        return response.json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as err:
        raise UserError(f"{url}/models: no model listed ({type(err).__name__}: {err}); start the "
                        f"engine first, or name its model with --engine-model") from None


class RemoteEngine:
    """Generation at a completion server's URL. It has no tokenizer here: `encode` is None and
    `context_length` unknown, so prompts are not cut on this side."""

    name = "remote"
    encode = None
    context_length = None

    def __init__(self, url: str, model: str, *, stop_markers=(), repetition_penalty: float = 1.0,
                 api_key: str | None = None, timeout_s: float = 120.0, end_ids=()):
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--engine must be 'local' or a URL like http://HOST:PORT/v1, not "
                            f"{url!r}")
        self.url, self.model = url.rstrip("/"), model
        self.stop_markers = tuple(stop_markers)
        self.repetition_penalty = repetition_penalty  # (the run's; not asked of the server)
        self.end_ids = sorted(set(end_ids))
        self.api_key, self.timeout_s = api_key, timeout_s

    def stream(self, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 0.9, stop_event: threading.Event | None = None, flags=None,
               **ignored) -> Iterator[str]:
        """Yield the answer as text deltas (logits_processor / generated_ids do not apply);
        `flags.cut` is set when the engine says max_tokens ended it (finish_reason "length")."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "stop": list(self.stop_markers),
                "stream": True}
        # A server's repetition penalty also counts the prompt's tokens (vLLM 0.32 penalises
        # prompt and output alike), so it would keep the answer from copying the FAQ; the
        # local engines' answer-only penalty has no equivalent there: none is asked (1.0
        # overrides a generation_config default). With the run's penalty at 1.0 both sides,
        # vLLM gave the transformers engine's greedy answers 14/14 (bench/vllm_shops.py).
        body["repetition_penalty"] = 1.0  # vLLM, TGI; others ignore it
        if self.end_ids:  # the run's end tokens (<end_of_turn> too): vLLM's extension
            body["stop_token_ids"] = self.end_ids
        # text pieces instead of token ids: "decoding" a list of pieces is joining them
        with closing(self._pieces(body, stop_event, flags)) as pieces:
            yield from answer_deltas(pieces, "".join, self.stop_markers, set())

    def _pieces(self, body: dict, stop_event, flags=None):
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = httpx.Timeout(self.timeout_s, connect=5.0)
        try:
            with httpx.stream("POST", f"{self.url}/completions", json=body, headers=headers,
                              timeout=timeout) as response:
                if response.status_code != 200:
                    raise EngineError(f"the engine at {self.url} answered "
                                      f"{response.status_code}: {response.read()[:300]!r}")
                for line in response.iter_lines():
                    if stop_event is not None and stop_event.is_set():
                        return
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        raise EngineError(f"the engine at {self.url} failed: {chunk['error']}")
                    for choice in chunk.get("choices") or []:
                        if choice.get("finish_reason") == "length" and flags is not None:
                            flags.cut = True
                        if choice.get("text"):
                            yield choice["text"]
        except (httpx.HTTPError, ValueError) as err:
            raise EngineError(f"the engine at {self.url} failed: {type(err).__name__}: {err}") \
                from None
