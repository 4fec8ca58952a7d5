"""Numbers spelt in Korean words, as digits: "삼천 원" 3000원, "사흘" 3일, "두 시간" 2시간.

    spell_out("삼천 원이고 사흘 걸려요")   # "3000 원이고 3일 걸려요"

Sino-Korean numbers are read before a unit when they carry a 십/백/천/만 ("오천 원", "십 분";
a lone "삼 일" is left alone); native ones before a counter ("두 개", "세 시", "한 달"); native
day words always, but "하루" only where it counts days ("하루 이내", not "좋은 하루 되세요").
KEYWORDS are words that state a fact with no number: "무료" is 0원, "당일"/"익일" are days 0/1.
"""

import re

SINO_DIGITS = dict(zip("일이삼사오육칠팔구", range(1, 10)))
SINO_PLACES = {"십": 10, "백": 100, "천": 1000}
SINO_UNITS = r"만\s*원|원|개월|분|시간|퍼센트|%|년|개|명|일|주|시|잔|회|번"
SINO = re.compile(rf"(?<![가-힣\d])([일이삼사오육칠팔구십백천만]+)\s*(?=(?:{SINO_UNITS}))")
NATIVE = {"한": 1, "두": 2, "세": 3, "네": 4, "다섯": 5, "여섯": 6, "일곱": 7, "여덟": 8,
          "아홉": 9, "열": 10, "열한": 11, "열두": 12, "스무": 20}
COUNTERS = {"시간": "시간", "시": "시", "개": "개", "명": "명", "잔": "잔", "번": "번", "장": "장",
            "봉": "봉", "달": "개월", "살": "세", "병": "병", "권": "권"}
NATIVE_COUNT = re.compile(
    r"(?<![가-힣])(열한|열두|스무|다섯|여섯|일곱|여덟|아홉|한|두|세|네|열|석)\s*"
    r"(시간|시(?!즌|작|험|리|설|스|장|키|켜|음|식|청|도|가)|개(?![가-힣]?[월선])|명|잔|번|장|봉"
    r"|달|살|병|권)")
DAYS = {"이틀": 2, "사흘": 3, "나흘": 4, "닷새": 5, "엿새": 6, "이레": 7, "열흘": 10, "보름": 15,
        "일주일": 7}
NATIVE_DAYS = re.compile(rf"(?<![가-힣])({'|'.join(DAYS)})")
# "하루" counts days only beside such a word; otherwise it is a greeting ("좋은 하루 되세요")
ONE_DAY = re.compile(r"(?<![가-힣])하루\s*(?=(?:이내|안|만|정도|뒤|후|전|이상|내|걸|소요|가량|쯤"
                     r"|~|-|에서|나|면|이면))")
KEYWORDS = {r"무료|공짜|무상": ("0", "원"), r"당일|같은 날": ("0", "날"),
            r"익일|다음\s?날|이튿날": ("1", "날")}


def sino(word: str) -> int | None:
    """The value of a Sino-Korean number ("삼천오백" 3500, "만" 10000); None if it is not one
    with a place (십/백/천/만)."""
    if not any(ch in word for ch in "십백천만"):
        return None
    total = section = digit = 0
    for ch in word:
        if ch in SINO_DIGITS:
            if digit:
                return None  # two digits in a row ("삼오"): not a number
            digit = SINO_DIGITS[ch]
        elif ch in SINO_PLACES:
            section += (digit or 1) * SINO_PLACES[ch]
            digit = 0
        else:  # 만
            total += ((section + digit) or 1) * 10_000
            section = digit = 0
    return total + section + digit


def spell_out(text: str) -> str:
    """`text` with the numbers it spells in words written in digits."""
    text = NATIVE_DAYS.sub(lambda m: f"{DAYS[m[1]]}일", text)
    text = ONE_DAY.sub("1일", text)
    text = SINO.sub(lambda m: f"{value} " if (value := sino(m[1])) is not None else m[0], text)
    count = dict(NATIVE, 석=3)
    return NATIVE_COUNT.sub(lambda m: f"{count[m[1]]}{COUNTERS[m[2]]}", text)
