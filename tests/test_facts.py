"""Guards builder/facts.py: Korean facts normalised alike, stated facts recalled, invented facts found."""

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
    assert facts(DELIVERY) == {("3000", "원"), ("30000", "원"), ("1~2", "일"), ("2~4", "일")}


def test_key_facts_keep_units_and_quoted_names():
    reference = "'매장 픽업'을 선택하시면 7일간 보관해 드려요. 2번 출구로 나오세요"
    assert key_facts(reference) == {("매장 픽업", "name"), ("7", "일"), ("2", "번")}
    assert key_facts("쿠폰은 주문 1건당 1장만") == {("1", "장")}  # the bare "1건" says little


def test_fact_recall():
    # DELIVERY's key facts: 3,000원, 30,000원, 1~2일, 2~4일
    assert fact_recall("3000원, 3만 원 이상 무료, 1~2일, 제주는 2~4일", DELIVERY) == 1.0
    assert fact_recall("배송비는 3000원이고 1~2일 걸려요", DELIVERY) == 0.5
    assert fact_recall("배송비는 3,000원입니다", DELIVERY) == 0.25
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
