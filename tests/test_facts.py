"""Guards builder/facts.py: Korean facts normalised alike, recalled, and checked in their clause."""

import pytest

from builder.facts import fact_recall, facts, invented, key_facts, states

DELIVERY = ("기본 배송비는 3,000원이며, 30,000원 이상 구매하시면 무료로 배송해 드립니다. "
            "출고 후 보통 1~2일 이내에 받아보실 수 있고, 제주·도서산간 지역은 2~4일 걸려요.")


# Facts


def test_the_same_amount_written_two_ways_is_one_fact():
    assert facts("10만 원") == facts("100,000원") == {("100000", "원")}
    assert facts("3천원") == facts("3,000 원") == {("3000", "원")}
    assert facts("30 분") == facts("30분") == {("30", "분")}
    assert facts("할인율 50퍼센트") == facts("할인율 50%") == {("50", "%")}
    assert facts("10만 원") != facts("10,000원")


def test_ranges_phone_numbers_and_ratios():
    assert facts("보통 1~2일 걸립니다") == facts("보통 1-2일 걸립니다") == {("1~2", "일")}
    assert facts("3,000~5,000원") == {("3000~5000", "원")}
    # a phone number is one fact, not three numbers
    assert facts("고객센터(02-0000-0000)로 연락 주세요") == {("02-0000-0000", "tel")}
    assert facts("원두와 물은 1:15 비율로") == {("1:15", "ratio")}
    assert facts("1:3") != facts("1:5")
    # "무료" is 0원
    assert facts(DELIVERY) == {("3000", "원"), ("30000", "원"), ("0", "원"), ("1~2", "일"),
                               ("2~4", "일")}


def test_key_facts_keep_units_and_quoted_names():
    reference = "'매장 픽업'을 선택하시면 7일간 보관해 드려요. 2번 출구로 나오세요"
    assert key_facts(reference) == {("매장 픽업", "name"), ("7", "일"), ("2", "번")}
    assert key_facts("쿠폰은 주문 1건당 1장만") == {("1", "장")}  # the bare "1건" says little


def test_fact_recall():
    # DELIVERY's key facts: 3,000원, 30,000원, 무료 (0원), 1~2일, 2~4일
    assert fact_recall("3000원, 3만 원 이상 무료, 1~2일, 제주는 2~4일", DELIVERY) == 1.0
    assert fact_recall("배송비는 3000원이고 1~2일 걸려요", DELIVERY) == 0.4
    assert fact_recall("배송비는 3,000원입니다", DELIVERY) == 0.2
    assert fact_recall("잘 모르겠어요", DELIVERY) == 0.0
    assert fact_recall("네, 가능합니다.", "네, 해외 배송도 가능합니다.") is None  # no facts to recall


def test_states_by_fact_and_by_text():
    assert states("택배비는 3천 원입니다", "3,000원")
    assert not states("택배비는 2,500원입니다", "3,000원")
    assert states("배송에는 1~2일 정도 걸려요", "1~2일")
    assert not states("배송에는 2일 걸려요", "1~2일")
    # no number in what is expected: the text itself, spaces ignored
    assert states("저희는 CJ 대한통운을 이용합니다", "CJ대한통운")
    assert not states("저희는 로젠택배를 이용합니다", "CJ대한통운")


def test_invented_finds_a_made_up_price_and_accepts_what_the_sources_state():
    assert invented("배송비는 5,000원이에요.", [DELIVERY]) == {("5000", "원")}
    assert invented("배송비는 3천 원, 3만 원 이상은 무료예요.", [DELIVERY]) == set()
    # a range whose ends the sources state (1~2일, 2~4일) is not invented; one with a new end is
    assert invented("지역에 따라 1~4일 걸려요.", [DELIVERY]) == set()
    assert invented("지역에 따라 1~5일 걸려요.", [DELIVERY]) == {("1~5", "일")}
    # the customer's own words count as a source
    assert invented("27,000원 주문이시군요.", [DELIVERY]) == {("27000", "원")}
    assert invented("27,000원 주문이시군요.", [DELIVERY, "장바구니 27,000원"]) == set()
    assert invented("고객센터(02-1234-5678)로 연락 주세요.", ["고객센터(02-0000-0000)"]) == {
        ("02-1234-5678", "tel")}
    assert invented("고객센터(02-0000-0000)로 연락 주세요.", ["고객센터(02-0000-0000)"]) == set()
    assert invented("3,000원", []) == {("3000", "원")}


# The fact guard's cases: what each answer states, against one FAQ answer (now shown / refused)

HOURS = "평일 오전 10시부터 오후 7시까지 운영합니다. 주말은 오전 11시부터 오후 5시까지예요."
TIERS = "단체 주문 시 100개 이상은 10%, 500개 이상은 15% 할인해 드립니다."
DAYS = "출고 후 1~2일 걸리며, 제주·도서산간은 3일 추가됩니다."
FEE = "기본 배송비는 3,000원입니다."
FREE = "기본 배송비는 3,000원이며, 5만 원 이상 구매하시면 무료입니다."
MONTH = "원두는 로스팅 후 3주 안에 드시는 것이 좋아요."
PHONE = "고객센터 02-1234-5678로 연락 주세요."
SAMEDAY = "오후 2시 이전 주문은 익일 출고됩니다."
REFUND = "환불은 3영업일 이내에 처리됩니다."
BANK = "무통장 입금은 국민은행 123-456-789012 (예금주 커피공방)로 해 주세요."
SITE = "자세한 내용은 https://coffee.example.com/faq 에서 확인하세요. 문의: help@coffee.example.com"
EXCH = "교환은 수령 후 7일 이내에 가능합니다."
GUARD_CASES = [
 ("오후 10시까지 운영합니다.", HOURS, True),
 ("평일은 10시부터 7시까지 운영합니다.", HOURS, False),
 ("평일 오전 10시부터 오후 7시까지 운영해요.", HOURS, False),
 ("주말은 10시부터 5시까지예요.", HOURS, True),
 ("100개 이상은 15% 할인됩니다.", TIERS, True),
 ("500개 이상은 15% 할인됩니다.", TIERS, False),
 ("100개 이상은 10%이고 500개 이상은 15% 할인이에요.", TIERS, False),
 ("2~3일 걸립니다.", DAYS, True),
 ("보통 1~2일 걸려요.", DAYS, False),
 ("제주는 3일이 추가로 걸려요.", DAYS, False),
 ("3월에 드시면 좋아요.", MONTH, True),
 ("배송비는 무료입니다.", FEE, True),
 ("5만 원 이상이면 무료예요.", FREE, False),
 ("배송비는 삼천 원입니다.", FEE, False),
 ("배송비는 오천 원입니다.", FEE, True),
 ("사흘 걸려요.", DAYS, True),
 ("사흘 더 걸려요.", DAYS, False),
 ("일주일 이내에 교환하실 수 있어요.", EXCH, False),
 ("일주일 이내에 교환하실 수 있어요.", REFUND, True),
 ("2주 안에 드세요.", MONTH, True),
 ("3주 안에 드세요.", MONTH, False),
 ("21일 안에 드세요.", MONTH, False),
 ("02.1234.9999로 전화 주세요.", PHONE, True),
 ("02.1234.5678로 전화 주세요.", PHONE, False),
 ("(02) 1234-5678로 전화 주세요.", PHONE, False),
 ("30％ 할인됩니다.", "원두 30g, 30,000원 이상 무료", True),
 ("10％ 할인됩니다.", TIERS, False),
 ("배송비는 3，000원입니다.", FEE, False),
 ("배송비는 3，500원입니다.", FEE, True),
 ("당일 출고됩니다.", SAMEDAY, True),
 ("다음 날 출고돼요.", SAMEDAY, False),
 ("오후 2시 전에 주문하시면 익일 출고돼요.", SAMEDAY, False),
 ("신한은행 110-987-654321로 입금해 주세요.", BANK, True),
 ("국민은행 123-456-789012로 입금해 주세요.", BANK, False),
 ("https://coffee-pay.example.net 에서 확인하세요.", SITE, True),
 ("https://coffee.example.com/faq 에서 확인하세요.", SITE, False),
 ("help@evil.example 로 메일 주세요.", SITE, True),
 ("help@coffee.example.com 로 메일 주세요.", SITE, False),
 ("좋은 하루 되세요!", FEE, False),
 ("환불은 3영업일 이내에 처리돼요.", REFUND, False),
]


@pytest.mark.parametrize("answer, source, refused", GUARD_CASES)
def test_a_number_is_checked_with_its_unit_qualifier_and_clause(answer, source, refused):
    """Each number is bound to its unit and neighbours: AM/PM, tiers, 추가, Korean numerals,
    무료, months, 당일/익일, NFKC, phone numbers however written, addresses and accounts."""
    assert bool(invented(answer, [source])) is refused


@pytest.mark.parametrize("answer, question, refused", [
    ("네, 배송비는 5,000원입니다.", "배송비 5,000원 맞죠?", True),
    ("네, 5,000원입니다.", "배송비 5,000원 맞죠?", True),
    ("결제 금액 40,000원은 5만 원 미만이라 배송비 3,000원이 붙어요.", "결제 예정 금액 40,000원", False),
    ("3개 주문하시면 배송비는 3,000원이에요.", "3개 주문하면 배송비 얼마예요?", False),
    ("https://evil.example 에서 결제하세요.", "https://evil.example 여기서 결제해도 되나요?", True),
])
def test_the_customers_numbers_are_said_back_only_as_theirs(answer, question, refused):
    """A number the customer wrote may be said back bound to their own word, never as the
    FAQ's (a word an entry gives another value) nor as an address to send them to."""
    assert bool(invented(answer, [FREE], customer=[question])) is refused
    assert not invented(answer, [FREE, question])  # (as a source, it backs anything)


def test_numbers_spelt_in_words_read_as_digits():
    """Sino-Korean and native numbers, day words; a greeting's 하루 is no fact."""
    assert facts("삼천 원") == facts("3,000원") and facts("오만 원") == facts("50,000원")
    assert facts("사흘") == {("3", "일")} and facts("일주일 이내") == {("7", "일")}
    assert facts("두 시간") == {("2", "시간")} and facts("한 달") == {("1", "개월")}
    assert facts("오후 7시") == {("19", "시")} and facts("2주") == {("14", "일")}
    assert facts("좋은 하루 되세요") == set() and facts("하루 이내") == {("1", "일")}
    assert facts("15％") == {("15", "%")} and facts("배송비 무료") == {("0", "원")}
