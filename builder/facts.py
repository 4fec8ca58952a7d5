"""Key facts in Korean shop answers: prices, days, hours, sizes, percentages, phone numbers.

    facts("기본 배송비는 3,000원이며 1~2일 걸립니다.")   # {('3000', '원'), ('1~2', '일')}
    invented("배송비는 5,000원이에요.", ["기본 배송비는 3,000원 ..."])   # {('5000', '원')}

A fact is a number (or a range, ratio or phone number) with its unit, normalised so that
"10만 원" and "100,000원", or "30 분" and "30분", are the same fact. The chat's fact guard
refuses an answer stating a fact found in none of the FAQ entries it was given; the eval counts
the reference's facts found in an answer (fact accuracy) and facts found nowhere (invented).
"""

import re
import unicodedata

PHONE = re.compile(r"(?<![\d-])0\d{1,3}-\d{3,4}-\d{4}(?![\d-])")
# "1만 5천원", "1만 5,000원": one amount written in two parts
SPLIT_AMOUNT = re.compile(r"(\d+)\s*만\s*(?:(\d+)\s*천|(\d[\d,]*)(?=\s*원))")
RATIO = re.compile(r"(?<![\d.])(\d+)\s*:\s*(\d+)(?![\d.])")
NUMBER = r"\d[\d,]*(?:\.\d+)?"
UNITS = ("만 원", "만원", "천 원", "천원", "원", "%", "퍼센트", "영업일", "개월", "주", "일",
         "시간", "분", "초", "시", "년", "개입", "개", "잔", "회", "kg", "g", "ml", "mL", "L",
         "mg", "℃", "도", "인", "명", "클릭", "석", "봉", "장", "자", "배", "세", "층", "번")
UNIT = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
QUANTITY = re.compile(
    rf"(?<![\d.,])({NUMBER})\s*(만|천)?\s*(?:(~|-|–)\s*({NUMBER})\s*(만|천)?\s*)?({UNIT})?"
)
QUOTED = re.compile(r"['‘\"“]([^'’\"”]{2,30})['’\"”]")
MULTIPLIER = {"만": 10_000, "천": 1_000, None: 1}
SAME_UNIT = {"만 원": "원", "만원": "원", "천 원": "원", "천원": "원", "퍼센트": "%", "mL": "ml"}


def _value(number: str, multiplier: str | None) -> str:
    value = float(number.replace(",", "")) * MULTIPLIER[multiplier]
    return f"{value:g}" if value != int(value) else str(int(value))


def facts(text: str) -> set[tuple[str, str]]:
    """{(value, unit)} of every number-like fact in `text`; unit "" for a bare number."""
    text = unicodedata.normalize("NFC", text)
    found: set[tuple[str, str]] = set()
    for phone in PHONE.findall(text):
        found.add((phone, "tel"))
    text = PHONE.sub(" ", text)
    text = SPLIT_AMOUNT.sub(lambda m: str(int(m[1]) * 10_000 + (int(m[2]) * 1_000 if m[2] else
                                                                 int(m[3].replace(",", "")))),
                            text)
    for a, b in RATIO.findall(text):
        found.add((f"{a}:{b}", "ratio"))
    text = RATIO.sub(" ", text)
    for number, mult, dash, number2, mult2, unit in QUANTITY.findall(text):
        if unit in ("만 원", "만원"):
            mult, unit = "만", "원"
        elif unit in ("천 원", "천원"):
            mult, unit = "천", "원"
        unit = SAME_UNIT.get(unit, unit or "")
        value = _value(number, mult or None)
        if dash and number2:
            value = f"{value}~{_value(number2, mult2 or mult or None)}"
        found.add((value, unit))
    return found


def quoted_names(text: str) -> set[str]:
    return {m.strip() for m in QUOTED.findall(unicodedata.normalize("NFC", text))}


def key_facts(reference: str) -> set[tuple[str, str]]:
    """The facts a right answer must state: every fact of the reference that carries a unit
    (a bare number such as a list position says little), plus quoted names."""
    keyed = {f for f in facts(reference) if f[1]}
    return keyed | {(name, "name") for name in quoted_names(reference)}


def fact_recall(answer: str, reference: str) -> float | None:
    """Share of the reference's key facts stated in the answer; None when it has none."""
    wanted = key_facts(reference)
    if not wanted:
        return None
    stated = facts(answer) | {(n, "name") for n in quoted_names(answer)}
    plain = " ".join(unicodedata.normalize("NFC", answer).split())
    hits = sum(1 for f in wanted if f in stated or (f[1] == "name" and f[0] in plain))
    return hits / len(wanted)


def states(answer: str, expected: str) -> bool:
    """Does the answer state the expected fact(s)? By fact when `expected` has any, else by
    text (a name such as "CJ대한통운"), ignoring spaces."""
    wanted = {f for f in facts(expected) if f[1] or len(facts(expected)) == 1}
    if wanted:
        return wanted <= facts(answer)
    squeeze = lambda s: "".join(unicodedata.normalize("NFC", s).split())  # noqa: E731
    return squeeze(expected) in squeeze(answer)


def invented(answer: str, sources: list[str]) -> set[tuple[str, str]]:
    """Facts of the answer found in none of the sources (the FAQ entries it was given, the
    customer's own question and context). A range also counts as found when each end is."""
    known = set().union(*(facts(s) for s in sources)) if sources else set()
    values = {v for v, _ in known}
    for v in list(values):
        values.update(v.split("~"))
    out = set()
    for value, unit in facts(answer):
        if (value, unit) in known:
            continue
        if not unit and value in values:  # a bare number that some source states
            continue
        if "~" in value and all(part in values for part in value.split("~")):
            continue
        out.add((value, unit))
    return out
