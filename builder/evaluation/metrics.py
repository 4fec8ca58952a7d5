"""Korean text metrics for answers against references: chrF, ROUGE-L and BLEU on Kiwi morphemes,
exact match. Pure functions on strings (builder.evaluation.evaluate uses them).
"""

import functools
import re
import unicodedata

METRICS = ("chrf", "rouge_l", "bleu", "exact_match", "loss", "ppl")
LABELS = {"chrf": "chrF", "rouge_l": "ROUGE-L", "bleu": "BLEU", "exact_match": "exact match",
          "loss": "loss", "ppl": "perplexity"}
METRIC_NOTES = {  # what each summary number is, written into report.json
    "chrf": "sacrebleu chrF (character 6-grams, beta 2), corpus-level, 0-100",
    "rouge_l": "LCS F1 on Kiwi morphemes, mean over questions, 0-1",
    "bleu": "sacrebleu corpus BLEU on Kiwi morphemes (tokenize=none), 0-100",
    "exact_match": "share equal after NFC, whitespace collapse, trailing punctuation cut",
    "loss": "mean NLL (nats) per reference answer token + EOS given the prompt, as in training",
    "ppl": "exp(loss)",
}
# Kiwi tags left out of morpheme sequences: sentence punctuation, brackets, ellipsis; a closing
# "." instead of "!" says nothing about an answer's content.
PUNCTUATION_TAGS = ("SF", "SP", "SS", "SE")
TRAILING_PUNCTUATION = re.compile(r"[\s.!?。．！？…~～]+$")


# ---------------------------------------------------------------------------------------------
# Metrics: pure functions on strings


def normalize(text: str) -> str:
    """NFC (a decomposed 한 is three jamo), whitespace collapsed, trailing punctuation cut."""
    return TRAILING_PUNCTUATION.sub("", " ".join(unicodedata.normalize("NFC", text).split()))


@functools.lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()  # loading its model takes 1-4 s: once per process


def morphemes(text: str) -> list[str]:
    """Kiwi morpheme forms without punctuation: '배송은 2일 걸립니다.' -> 배송 은 2 일 걸리 ᆸ니다."""
    text = unicodedata.normalize("NFC", text).strip()
    tokens = _kiwi().tokenize(text) if text else []
    return [t.form.replace(" ", "_") for t in tokens if not t.tag.startswith(PUNCTUATION_TAGS)]


def exact_match(hyp: str, ref: str) -> float:
    return float(normalize(hyp) == normalize(ref))


# chrF: character 1-6-grams. Korean is agglutinative (배송은 / 배송이 / 배송을 are one noun):
# character n-grams credit the shared stem where whole words would not match at all.
def chrf(hyp: str, ref: str) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(normalize(hyp), [normalize(ref)]).score


def corpus_chrf(hyps: list[str], refs: list[str]) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score([normalize(h) for h in hyps], [[normalize(r) for r in refs]]).score


# BLEU on Kiwi morphemes with tokenize="none". Korean BLEU is conventionally computed on
# morphemes (sacrebleu's ko-mecab, used at WMT); Kiwi gives that kind of split without mecab.
# On eojeol (space words) 배송은 vs 배송이 is a miss; char BLEU over-credits the syllables that
# every polite answer shares (니, 다, 습, 요), so unrelated answers score well above zero.
def bleu(hyp: str, ref: str) -> float:
    """Sentence BLEU (0-100); n-gram orders longer than the sentence are skipped."""
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="none", effective_order=True).sentence_score(
        " ".join(morphemes(hyp)), [" ".join(morphemes(ref))]).score


def corpus_bleu(hyps: list[str], refs: list[str]) -> float:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="none").corpus_score(
        [" ".join(morphemes(h)) for h in hyps], [[" ".join(morphemes(r)) for r in refs]]).score


# ROUGE-L on Kiwi morphemes, not characters: the longest common subsequence keeps the content
# morphemes (배송, 2, 일, 걸리) matching when a 조사 or 어미 differs (은/이, ㅂ니다/어요), which
# then costs one morpheme: close to how a Korean reader judges "the same answer". A character
# LCS rewards unrelated sentences for the syllables of polite endings they share.
def rouge_l(hyp: str, ref: str) -> float:
    """ROUGE-L F1 (0-1) over morphemes."""
    h, r = morphemes(hyp), morphemes(ref)
    if not h or not r:
        return float(h == r)
    previous = [0] * (len(r) + 1)  # LCS table, one row at a time
    for x in h:
        current = [0]
        for j, y in enumerate(r):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    return 2 * lcs / (len(h) + len(r))  # F1 of precision lcs/|h| and recall lcs/|r|
