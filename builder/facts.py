"""Key facts in Korean shop answers: prices, days, hours, sizes, percentages, phone numbers,
web addresses, e-mail addresses and account numbers.

    facts("기본 배송비는 3,000원이며 1~2일 걸립니다.")   # {('3000', '원'), ('1~2', '일')}
    invented("배송비는 5,000원이에요.", ["기본 배송비는 3,000원 ..."])   # {('5000', '원')}

A fact is a number (or a range, ratio or phone number) with its unit, normalised so that
"10만 원", "100,000원" and "십만 원", "3일" and "사흘", "7일" and "일주일", "30 분" and "30분",
"15%" and "15％" are the same fact; "무료" is 0원, "당일"/"익일" are days 0 and 1, "오후 7시" is
19시. The chat's fact guard refuses an answer stating a fact found in none of the FAQ entries it
was given; the eval counts the reference's facts found in an answer (fact accuracy) and facts
found nowhere (invented).

A number is checked with what stands beside it in its clause (`Claim`): its qualifier
(이상/이하/이내/추가, 오전/오후) and the other facts of the clause. So "100개 이상은 15%" is
refused against "100개 이상은 10%, 500개 이상은 15%" (the tiers swapped), "2~3일" against
"1~2일, 제주는 3일 추가" and "오후 10시" against "오전 10시부터 오후 7시까지". The customer's
own numbers (question, order data) may be said back only as the customer's, never as the
FAQ's ("배송비 5,000원 맞죠?" does not make "배송비는 5,000원입니다" true).
"""

import re
import unicodedata
from dataclasses import dataclass

from builder.numerals import KEYWORDS, spell_out

PHONE = re.compile(r"(?<![\d.-])(?:\(?0\d{1,3}\)?[-.\s]?\d{3,4}[-.\s]\d{4}"
                   r"|1[5-9]\d{2}[-.\s]\d{4})(?![\d-])")
URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'가-힣]+", re.I)
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
ACCOUNT = re.compile(r"(?<![\d-])\d{2,6}(?:-\d{2,7}){2,4}(?![\d-])")  # bank account, business id
# "1만 5천원", "1만 5,000원": one amount written in two parts
SPLIT_AMOUNT = re.compile(r"(\d+)\s*만\s*(?:(\d+)\s*천|(\d[\d,]*)(?=\s*원))")
RATIO = re.compile(r"(?<![\d.])(\d+)\s*:\s*(\d+)(?![\d.])")
# "오후 7시" is 19시; a bare "7시" may be either (matched both ways)
HOUR = re.compile(r"(오전|오후|아침|낮|저녁|밤|새벽)\s*(\d{1,2})\s*"
                  r"(?:(~|-)\s*(\d{1,2})\s*)?시(?!간)")
AFTERNOON = {"오후", "저녁", "밤", "낮"}
WEEKS = re.compile(r"(\d+)\s*주일?(?![년차])")  # "2주" is 14일
NUMBER = r"\d[\d,]*(?:\.\d+)?"
UNITS = ("만 원", "만원", "천 원", "천원", "원", "%", "퍼센트", "영업일", "개월", "주", "일",
         "시간", "분", "초", "시", "년", "월", "개입", "개", "잔", "회", "kg", "g", "ml", "mL", "L",
         "mg", "℃", "도", "인", "명", "클릭", "석", "봉", "장", "자", "배", "세", "층", "번")
UNIT = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
QUANTITY = re.compile(
    rf"(?<![\d.,])({NUMBER})\s*(만|천)?\s*(?:(~|-|–)\s*({NUMBER})\s*(만|천)?\s*)?({UNIT})?"
)
QUOTED = re.compile(r"['‘\"“]([^'’\"”]{2,30})['’\"”]")
MULTIPLIER = {"만": 10_000, "천": 1_000, None: 1}
SAME_UNIT = {"만 원": "원", "만원": "원", "천 원": "원", "천원": "원", "퍼센트": "%", "mL": "ml"}
# what a number's neighbouring word makes of it; a qualifier class per word
QUALIFIER_AFTER = re.compile(r"\s*(?:이|가|은|는|씩|을|를)?\s*"
                             r"(이상|넘|초과|이하|이내|미만|까지|추가|더)")
QUALIFIER_BEFORE = re.compile(r"(추가|최대|최소)\s*$")
QUALIFIER = {"이상": "min", "넘": "min", "초과": "min", "최소": "min", "이하": "max", "이내": "max",
             "미만": "max", "최대": "max", "까지": "max", "추가": "add", "더": "add"}
# where a clause ends: a sentence end, a comma or semicolon (not "3,000"), a joining ending
CLAUSE_END = re.compile(r"(?<=[.!?])\s+|\n+|[;]|,(?!\d{3}(?!\d))|(?<=[다요죠])\s+"
                        r"|(?<=[고며데])\s+|(?<=지만|면서)\s+")
PARTICLE = re.compile(r"(?:은|는|이|가|을|를|의|도|에|로|으로|와|과|에서|까지|부터|만|이며|이고)$")
EXACT_UNITS = ("url", "email", "account")  # said back only from an FAQ entry, letter for letter


@dataclass(frozen=True)
class Claim:
    """One fact as stated in one clause: the value, its unit, what qualifies it, its word."""

    value: str
    unit: str
    qualifier: str = ""  # "min" (이상), "max" (이내), "add" (추가) or ""
    daypart: bool = False  # an hour said with 오전/오후 (value in 24 hours)
    word: str = ""  # the word just before it in its clause ("배송비" in "배송비는 3,000원")


def _value(number: str, multiplier: str | None) -> str:
    value = float(number.replace(",", "")) * MULTIPLIER[multiplier]
    return f"{value:g}" if value != int(value) else str(int(value))


def _hours(m: re.Match) -> str:
    shift = 12 if m[1] in AFTERNOON else 0
    first = int(m[2]) + (shift if int(m[2]) < 12 else 0)
    if not m[3]:
        return f"{first}시\u2060"  # (a word joiner marks the hour as said with 오전/오후)
    second = int(m[4]) + (shift if int(m[4]) < 12 else 0)
    return f"{first}~{second}시\u2060"


def normalise(text: str) -> str:
    """NFKC (fullwidth ％ and ，), numbers spelt in words as digits, weeks as days."""
    text = spell_out(unicodedata.normalize("NFKC", text))
    text = HOUR.sub(_hours, text)
    return WEEKS.sub(lambda m: f"{int(m[1]) * 7}일", text)


def _word(before: str) -> str:
    words = re.findall(r"[가-힣A-Za-z]+", before)
    return PARTICLE.sub("", words[-1]) if words else ""


def _clause_claims(clause: str) -> list[Claim]:
    found: list[Claim] = []
    for pattern, unit in ((URL, "url"), (EMAIL, "email")):
        for m in pattern.finditer(clause):
            found.append(Claim(m[0].rstrip(".,)").lower(), unit))
        clause = pattern.sub(" ", clause)
    for m in PHONE.finditer(clause):
        digits = "-".join(re.findall(r"\d+", m[0]))  # "02.1234.5678" is 02-1234-5678
        found.append(Claim(digits, "tel", word=_word(clause[:m.start()])))
    clause = PHONE.sub(" ", clause)
    found += [Claim(m[0], "account") for m in ACCOUNT.finditer(clause)]
    clause = ACCOUNT.sub(" ", clause)
    for word, (value, unit) in KEYWORDS.items():
        for m in re.finditer(word, clause):
            found.append(Claim(value, unit, word=_word(clause[:m.start()])))
    clause = re.sub("|".join(KEYWORDS), " ", clause)
    clause = SPLIT_AMOUNT.sub(lambda m: str(int(m[1]) * 10_000 + (
        int(m[2]) * 1_000 if m[2] else int(m[3].replace(",", "")))), clause)
    found += [Claim(f"{a}:{b}", "ratio") for a, b in RATIO.findall(clause)]
    clause = RATIO.sub(" ", clause)
    for m in QUANTITY.finditer(clause):
        number, mult, dash, number2, mult2, unit = m.groups()
        if unit in ("만 원", "만원"):
            mult, unit = "만", "원"
        elif unit in ("천 원", "천원"):
            mult, unit = "천", "원"
        unit = SAME_UNIT.get(unit, unit or "")
        value = _value(number, mult or None)
        if dash and number2:
            value = f"{value}~{_value(number2, mult2 or mult or None)}"
        after = QUALIFIER_AFTER.match(clause, m.end())
        before = QUALIFIER_BEFORE.search(clause[:m.start()])
        qualifier = QUALIFIER.get((after or before or [None, ""])[1], "")
        daypart = unit == "시" and clause.startswith("\u2060", m.end())
        found.append(Claim(value, unit, qualifier, daypart, _word(clause[:m.start()])))
    return found


def clauses(text: str) -> list[list[Claim]]:
    """The claims of each clause of `text`, in order (clauses without one left out)."""
    parts = (_clause_claims(part) for part in CLAUSE_END.split(normalise(text)) if part)
    return [claims for claims in parts if claims]


def facts(text: str) -> set[tuple[str, str]]:
    """{(value, unit)} of every number-like fact in `text`; unit "" for a bare number."""
    return {(c.value, c.unit) for claims in clauses(text) for c in claims}


def quoted_names(text: str) -> set[str]:
    return {m.strip() for m in QUOTED.findall(unicodedata.normalize("NFC", text))}


def key_facts(reference: str) -> set[tuple[str, str]]:
    """The facts a right answer must state: every fact of the reference that carries a unit
    (a bare number such as a list position says little), plus quoted names."""
    keyed = {f for f in facts(reference) if f[1]}
    return keyed | {(name, "name") for name in quoted_names(reference)}


def _hour_fits(said: str, known: set[str]) -> bool:
    """A bare hour fits the same hour either side of noon ("7시" and "19시")."""
    return said in known or said.isdigit() and int(said) <= 12 and str(int(said) + 12) in known


def _stated(wanted: tuple[str, str], stated: set[tuple[str, str]]) -> bool:
    value, unit = wanted
    if unit == "시":
        return any(u == "시" and (v == value or _hour_fits(v, {value})) for v, u in stated)
    return wanted in stated


def fact_recall(answer: str, reference: str) -> float | None:
    """Share of the reference's key facts stated in the answer; None when it has none."""
    wanted = key_facts(reference)
    if not wanted:
        return None
    stated = facts(answer) | {(n, "name") for n in quoted_names(answer)}
    plain = " ".join(unicodedata.normalize("NFC", answer).split())
    hits = sum(1 for f in wanted if _stated(f, stated) or (f[1] == "name" and f[0] in plain))
    return hits / len(wanted)


def states(answer: str, expected: str) -> bool:
    """Does the answer state the expected fact(s)? By fact when `expected` has any, else by
    text (a name such as "CJ대한통운"), ignoring spaces."""
    wanted = {f for f in facts(expected) if f[1] or len(facts(expected)) == 1}
    if wanted:
        stated = facts(answer)
        return all(_stated(f, stated) for f in wanted)
    squeeze = lambda s: "".join(unicodedata.normalize("NFC", s).split())  # noqa: E731
    return squeeze(expected) in squeeze(answer)


def same(said: Claim, known: Claim) -> bool:
    """Does a known claim back what was said: value and unit, the hour either side of noon
    unless one was said with 오전/오후, a qualifier that does not contradict (an amount said
    without its "이상" is still that amount; "3일 추가" is not "3일", "3일 이상" not "3일 이내")."""
    if said.unit != known.unit:
        return False
    if said.value != known.value:
        if said.unit != "시" or said.daypart and known.daypart:
            return False
        bare, other = (said, known) if not said.daypart else (known, said)
        if bare.daypart or not _hour_fits(bare.value, {other.value}) or "~" in said.value:
            return False
    qualifiers = {said.qualifier, known.qualifier}
    if len(qualifiers) == 1:
        return True
    if known.qualifier == "add" or said.qualifier == "add" and known.qualifier:
        return False  # "3일 추가" said as "3일" (an "추가" the entry states apart is fine)
    # the other side of an amount's threshold is the same threshold ("5만 원 미만이라" for
    # "5만 원 이상 무료"); "3일 이상" is not "3일 이내"
    return "" in qualifiers or said.unit == "원"


def invented(answer: str, sources: list[str], customer: list[str] = ()) -> set[tuple[str, str]]:
    """Facts of the answer that the sources (the FAQ entries it was given) do not back, each
    with what stands beside it in its clause. `customer`: the customer's own question and
    order data, whose numbers may be said back as the customer's (bound to the same word, and
    to no word an entry gives another value) but are never taken as the FAQ's."""
    backing = Backing([clauses(s) for s in sources if s], [clauses(c) for c in customer if c])
    return {(c.value, c.unit) for claims in clauses(answer) for c in backing.unbacked(claims)}


class Backing:
    """What the FAQ's clauses (and the customer's) back, for `invented`."""

    def __init__(self, sources: list[list[list[Claim]]], customer: list[list[list[Claim]]]):
        self.clauses = [clause for source in sources for clause in source]
        self.customer = [c for source in customer for clause in source for c in clause]

    def _holding(self, said: Claim) -> list[list[Claim]]:
        return [clause for clause in self.clauses if any(same(said, k) for k in clause)]

    def known(self, said: Claim) -> bool:
        """Stated in an entry: exactly, or for a bare number any unit, for a range each end
        (an end that is an "추가" is no end: "3일 추가" does not make "2~3일")."""
        known = [k for clause in self.clauses for k in clause]
        if said.unit in EXACT_UNITS + ("tel",):
            return any((k.value, k.unit) == (said.value, said.unit) for k in known)
        if any(same(said, k) for k in known):
            return True
        ends = lambda k: k.value.split("~")  # noqa: E731
        if not said.unit:  # a bare number that some entry states
            return any(said.value in ends(k) for k in known)
        if "~" in said.value:
            return all(any(k.unit == said.unit and k.qualifier != "add" and
                           (end in ends(k) or said.unit == "시" and _hour_fits(end, set(ends(k))))
                           for k in known) for end in ends(said))
        return False

    def said_back(self, said: Claim) -> bool:
        """The customer's own number said back as theirs: bound to the word it had in their
        words, a word no entry gives another value of that unit ("배송비 5,000원 맞죠?" does not
        make "배송비는 5,000원입니다" true when an entry says 배송비 3,000원)."""
        if said.unit in EXACT_UNITS:
            return False  # an address the customer typed is never given out as the shop's
        if not any(same(said, k) and k.word == said.word for k in self.customer):
            return False
        return not said.word or not any(
            k.word == said.word and k.unit == said.unit and not same(said, k)
            for clause in self.clauses for k in clause)

    def _tied(self, a: Claim, b: Claim) -> bool:
        """Every entry clause stating `a` binds it to another value of `b`'s unit."""
        holding = self._holding(a)
        return bool(holding) and all(
            any(k.unit == b.unit and not same(a, k) and not same(b, k) for k in clause)
            for clause in holding)

    def unbacked(self, claims: list[Claim]) -> list[Claim]:
        """The claims of one answer clause the entries do not back: alone, or together (two
        facts the entries state, but each bound to something else: "100개 이상은 15%" when
        the entry says "100개 이상은 10%, 500개 이상은 15%")."""
        out = [c for c in claims if not self.known(c) and not self.said_back(c)]
        backed = [c for c in claims if c.unit and c not in out and self.known(c)]
        for i, a in enumerate(backed):
            for b in backed[i + 1:]:
                if same(a, b) or same(b, a) or b in out:
                    continue
                together = any(any(same(b, k) for k in clause) for clause in self._holding(a))
                # (amounts of one unit are left alone: "5만 원 미만이라 3,000원" joins a
                # threshold and a fee the entry states apart, rightly)
                apart = a.unit != b.unit or a.unit == "시"
                if not together and apart and (self._tied(a, b) or self._tied(b, a)):
                    out.append(b)
        return out
