"""The cut rules: where a generated answer ends, what of it can be shown while it grows, and
what of a prompt is cut when it does not fit the model. Pure functions on text, shared by every
engine and by streamed and one-shot answers.

    visible_answer("배송비는 3,000원입니다.\n### 질문", ["### 질문"])   # '배송비는 3,000원입니다.'
    for delta in answer_deltas(token_ids, decode, stop_markers, end_ids): ...

Generation stops at any end token and at any of the template's stop markers ("### 질문", ...):
an under-trained model often opens the next block instead of ending. What the user sees is
`visible_answer(text)` of the text generated so far; the stream yields how that grows, so a
joined stream is the final answer by construction.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence

# decode() gives U+FFFD for a character whose bytes are not all generated yet (byte fallback)
REPLACEMENT_CHAR = "\ufffd"


def partial_marker_length(text: str, stop_markers: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the start of a stop marker (0 if none)."""
    longest = 0
    for marker in stop_markers:
        for size in range(min(len(marker), len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


def visible_answer(text: str, stop_markers: Sequence[str]) -> str:
    """What can be shown of a (possibly still growing) generated text.

    Cut before the first stop marker; hold back a trailing half-decoded character (it becomes
    Hangul once its last byte arrives) and a trailing start of a marker ("###" may become
    "### 질문"); strip whitespace. For a text that only grows, each result is a prefix of
    the next one: that is what makes streaming by deltas safe.
    """
    found = [i for i in (text.find(marker) for marker in stop_markers) if i >= 0]
    text = text[: min(found, default=len(text))].rstrip(REPLACEMENT_CHAR)
    text = text[: len(text) - partial_marker_length(text, stop_markers)]
    return text.strip()


def answer_deltas(token_ids: Iterable[int], decode: Callable[[list[int]], str],
                  stop_markers: Sequence[str], end_ids: set[int]) -> Iterator[str]:
    """Text deltas of an answer whose token ids arrive one at a time.

    The whole answer is decoded at every token (not token by token): a multi-byte character
    split over byte tokens, or a space merged into the next token, then decodes right.
    """
    ids: list[int] = []
    shown = ""
    for token_id in token_ids:
        if token_id in end_ids:
            break
        ids.append(token_id)
        text = decode(ids)
        answer = visible_answer(text, stop_markers)
        if len(answer) > len(shown) and answer.startswith(shown):  # only ever append
            yield answer[len(shown):]
            shown = answer
        if any(marker in text for marker in stop_markers):
            break


# A prompt longer than the model's context: what is cut, and in which order


def fit_prompt(encode: Callable[[str, str], list[int]], question: str, context: str,
               budget: int) -> tuple[str, str]:
    """(question, context) cut so that `encode(question, context)` takes at most `budget` tokens.

    What does not fit is cut from the context's end first (the context is dropped if need be),
    then from the question's middle: its start stays and twice as much of its end, the part
    next to the answer. `encode("", "")`, the template alone, must fit.
    """
    if len(encode(question, context)) <= budget:
        return question, context
    if context and len(encode(question, "")) <= budget:
        keep = _longest_fit(lambda n: len(encode(question, context[:n])) <= budget, len(context))
        return question, context[:keep]

    def fits(n: int) -> bool:
        return len(encode(_cut_middle(question, n), "")) <= budget

    return _cut_middle(question, _longest_fit(fits, len(question))), ""


def _cut_middle(text: str, keep: int) -> str:
    """`text` in `keep` characters: its first third and last two thirds, joined by an ellipsis."""
    if keep >= len(text):
        return text
    if keep == 0:
        return ""
    head = keep // 3
    return text[:head] + "…" + text[len(text) - (keep - head):]


def _longest_fit(fits: Callable[[int], bool], n: int) -> int:
    """The largest k in 0..n with fits(k), by bisection; fits(0) is taken as true."""
    low, high = 0, n
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
