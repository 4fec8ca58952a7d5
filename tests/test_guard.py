"""Guards builder/answering/guard.py: only checked, complete sentences are shown; loops and declines are recognised."""

from builder.config import DECLINE_MESSAGE
from builder.answering.guard import GuardedText, echoes, is_decline, runaway

SOURCES = ["배송비는 얼마인가요? 기본 배송비는 3,000원이며, 30,000원 이상 구매하시면 무료로 "
           "배송해 드립니다.", "배송비 얼마임?", ""]


def feed_all(guard: GuardedText, deltas: list[str]) -> list[str]:
    return [guard.feed(delta) for delta in deltas]


def test_only_complete_sentences_are_released():
    guard = GuardedText(SOURCES)
    shown = feed_all(guard, ["기본 배송비는 ", "3,0", "00원", "입니다. 3만원 이상", "이면 무료예요. 그리고"])
    # nothing until the first sentence ends; a half-written "3,0" is never shown
    assert shown[:3] == ["", "", ""]
    assert shown[3] == "기본 배송비는 3,000원입니다."
    assert shown[4] == " 3만원 이상이면 무료예요."
    assert not guard.tripped
    assert guard.finish() == " 그리고"  # the rest, once the generation ended and it is clean
    assert guard.finish() == ""  # released once
    assert "".join(shown) + " 그리고" == guard.text


def test_a_sentence_with_a_made_up_price_trips_the_guard_and_nothing_follows():
    guard = GuardedText(SOURCES)
    shown = feed_all(guard, ["배송비는 3,000원입니다. ", "지금은 할인해서 ", "9,999원입니다. ",
                             "30,000원 이상은 무료입니다. "])
    assert shown == ["배송비는 3,000원입니다.", "", "", ""]
    assert guard.tripped and guard.invented == {("9999", "원")}
    assert guard.finish() == ""
    assert "9,999원" in guard.text  # kept for the record, never shown


def test_an_invented_fact_in_the_unfinished_last_sentence_is_caught_at_finish():
    guard = GuardedText(SOURCES)
    assert guard.feed("배송비는 3,000원입니다. 제주는 ") == "배송비는 3,000원입니다."
    assert guard.feed("4,000원") == ""
    assert guard.finish() == "" and guard.tripped and guard.invented == {("4000", "원")}


def test_the_guard_can_be_turned_off():
    guard = GuardedText(SOURCES, enabled=False)
    assert feed_all(guard, ["배송비는 9,999원", "입니다. ", "무료"]) == ["", "배송비는 9,999원입니다.", ""]
    assert guard.finish() == " 무료" and not guard.tripped


def test_runaway_is_an_8_gram_said_three_times():
    loop = [5, 6, 7, 8, 9, 10, 11, 12]
    assert runaway(list(range(100, 110)) + loop + loop + loop)
    # the same 8 tokens twice is a fact said twice (a price spelled digit by digit), no loop
    assert not runaway(list(range(100, 110)) + loop + [0, 1] + loop)
    assert runaway([1, 2, 3] * 6)  # a short cycle repeats every 8-gram in it
    assert not runaway([1, 2, 3] * 3)  # 9 tokens: its 8-grams occur twice at most
    assert not runaway(list(range(100, 140)))
    assert not runaway(loop + [0] + loop[:-1])  # 7 tokens repeated are not yet a loop
    assert not runaway(loop)  # too short to repeat
    # a normal answer: words come back, but no run of 8 tokens does
    answer = [7, 8, 9, 10, 11, 7, 8, 12, 13, 14, 15, 9, 10, 16, 17, 18, 19, 20, 7, 8, 9, 21]
    assert not runaway(answer)


def test_is_decline():
    assert is_decline(DECLINE_MESSAGE, DECLINE_MESSAGE)
    spaced = DECLINE_MESSAGE.replace(" ", "  ").replace(". ", ".\n")
    assert is_decline(spaced + " 추가 문장", DECLINE_MESSAGE)  # spacing and a tail do not matter
    assert not is_decline("기본 배송비는 3,000원입니다.", DECLINE_MESSAGE)
    assert not is_decline("죄송합니다. 품절입니다.", DECLINE_MESSAGE)  # an apology is not a decline
    assert not is_decline("", DECLINE_MESSAGE)
    assert not is_decline("무엇이든", "")


def test_an_answer_that_opens_with_an_faq_question_echoes_it():
    questions = ["실버 등급이 되려면 얼마나 더 사야 하나요?", "원두는 어떤 용량으로 판매하나요?"]
    assert echoes("실버 등급이 되려면 얼마나 더 사야 하나요? (회원등급: 브론즈)", questions)
    assert echoes("원두는 어떤 용량으로 판매하나요", questions)  # punctuation and spaces aside
    assert not echoes("최근 6개월 구매 금액이 100,000원 이상이면 실버 등급이 됩니다.", questions)
    assert not echoes("네", ["네"])  # too short to say


ANSWER = "기본 배송비는 3,000원이며, 30,000원 이상 구매하시면 무료로 배송해 드립니다."


def test_an_entrys_answer_copied_word_for_word_is_shown_as_it_comes():
    guard = GuardedText(SOURCES, answers=[ANSWER, "다른 답입니다."])
    deltas = ["기본", " 배송비는", " 3,0", "00원이며,", " 30,000원", " 이상"]
    assert feed_all(guard, deltas) == deltas  # no waiting for a sentence's end
    assert not guard.tripped and guard.finish() == ""
    # a number half shown, then changed: the entry's own rest completes what was shown
    guard = GuardedText(SOURCES, answers=[ANSWER])
    shown = feed_all(guard, ["기본", " 배송비는", " 3,0", "50원이며,"])
    assert shown == ["기본", " 배송비는", " 3,0", ""] and guard.tripped and guard.changed
    assert "".join(shown) + guard.copied_rest() == ANSWER


def test_a_copy_that_leaves_its_entry_for_an_invented_price_is_finished_from_the_entry():
    guard = GuardedText(SOURCES, answers=[ANSWER])
    shown = feed_all(guard, ["기본 ", "배송비는 ", "3,000원이며, ", "지금은 ", "9,999원 ", "할인 중입니다. "])
    assert "".join(shown) == "기본 배송비는 3,000원이며, "
    assert guard.tripped and guard.invented == {("9999", "원")}
    # what was shown is the entry's answer so far: its rest completes it
    assert "".join(shown) + guard.copied_rest() == ANSWER


def test_a_copy_that_leaves_its_entry_goes_on_sentence_by_sentence():
    guard = GuardedText(SOURCES, answers=[ANSWER])
    shown = feed_all(guard, ["기본 ", "배송비는 ", "3,000원입니다. ", "감사합니다. "])
    assert shown == ["기본 ", "배송비는 ", "3,000원입니다.", " 감사합니다."] and not guard.tripped
    assert guard.copied_rest() == ""  # what was shown is no longer the entry's answer


def test_an_answer_opening_with_an_entrys_question_is_never_shown():
    question = "실버 등급이 되려면 얼마나 더 사야 하나요?"
    guard = GuardedText(SOURCES + [question], questions=[question])
    shown = feed_all(guard, ["실버 등급이 ", "되려면 얼마나 더 ", "사야 하나요? ", "(회원등급: 브론즈)"])
    assert shown == ["", "", "", ""] and guard.tripped and guard.echoed and not guard.invented
    assert guard.finish() == ""
    # an answer that only shares its first words with the question is shown
    guard = GuardedText(SOURCES + [question], questions=[question])
    assert guard.feed("실버 등급이 되려면 구매 금액이 ") == ""
    assert guard.finish() == "실버 등급이 되려면 구매 금액이 " and not guard.tripped


def test_an_opening_from_no_entrys_answer_is_never_shown_but_the_decline_message_is():
    decline = DECLINE_MESSAGE
    guard = GuardedText(SOURCES, answers=[ANSWER], decline_message=decline)
    shown = feed_all(guard, ["네 ", "오늘 날씨가 맑고 ", "바람이 붑니다. ", "기본 배송비는 3,000원입니다. "])
    # "네" is too short to judge; with the next sentence it is an answer from no entry
    assert shown == ["", "", "", ""] and guard.tripped and guard.unsupported
    guard = GuardedText(SOURCES, answers=[ANSWER], decline_message=decline)
    assert guard.feed(decline + " ") == decline and not guard.tripped
    guard = GuardedText(SOURCES, answers=[ANSWER], decline_message=decline)
    assert guard.feed("네 기본 배송비는 3,000원이고 ") == ""  # judged once a sentence ends
    assert guard.feed("30,000원 이상이면 무료로 배송해 드립니다. ") == (
        "네 기본 배송비는 3,000원이고 30,000원 이상이면 무료로 배송해 드립니다.")


def test_a_copy_that_changes_one_of_its_entrys_numbers_is_finished_from_the_entry():
    answer = "네, 드립백은 50개 이상부터 단체 주문이 가능합니다. 100개 이상은 10%, 500개 이상은 15% 할인해 드려요."
    guard = GuardedText([answer], answers=[answer])
    # both 15% and 100개 are in the entry, but not together: the copy changed a number
    shown = feed_all(guard, ["네, 드립백은 ", "50개 이상부터 ", "단체 주문이 ", "가능합니다. ",
                             "100개 ", "이상은 ", "15% ", "할인해 ", "드려요."])
    assert guard.tripped and guard.changed and not guard.invented
    assert "".join(shown) + guard.copied_rest() == answer
    assert guard.why() == "an entry's answer with a number changed"
    # the same copy reworded where it states no number goes on
    guard = GuardedText([answer], answers=[answer])
    shown = feed_all(guard, ["네, 드립백은 ", "50개 이상부터 ", "단체 주문을 ", "받아요. "])
    assert not guard.tripped and "".join(shown) + guard.finish() == (
        "네, 드립백은 50개 이상부터 단체 주문을 받아요. ")


def test_a_copy_of_an_entry_that_fits_the_question_less_is_not_shown():
    rejoin = "네, 가능합니다. 다만 같은 이메일로는 탈퇴일로부터 30일이 지난 뒤에 다시 가입하실 수 있어요."
    leave = "마이페이지 > 회원정보 수정 하단의 '회원탈퇴'에서 진행하실 수 있습니다."
    guard = GuardedText([rejoin, leave], answers=[rejoin, leave], may_copy=[rejoin])
    shown = feed_all(guard, ["마이", "페이지 ", "> ", "회원정보 ", "수정 "])
    assert shown == [""] * 5 and guard.tripped and guard.reselected
    assert guard.copied_rest() == "" and guard.finish() == ""  # nothing shown: the best entry's
    # an opening shared by both is held until it says which it copies
    other = "네, 가능합니다. 탈퇴 신청은 마이페이지에서 하실 수 있어요."
    guard = GuardedText([rejoin, other], answers=[rejoin, other], may_copy=[other])
    assert guard.feed("네, ") == "네, " and guard.feed("가능합니다. ") == "가능합니다. "
    assert guard.feed("다만 ") == "" and guard.tripped and guard.reselected
    assert guard.copied_rest() == "탈퇴 신청은 마이페이지에서 하실 수 있어요."
    # with no may_copy every entry may be copied
    guard = GuardedText([rejoin, leave], answers=[rejoin, leave])
    assert feed_all(guard, ["마이", "페이지 ", "> "]) == ["마이", "페이지 ", "> "]


def test_an_answer_reworded_from_an_entry_that_fits_the_question_less_is_not_shown():
    capsule = "일반 캡슐 1개 기준 약 60mg 내외입니다. 디카페인 캡슐은 카페인을 99.9% 제거했어요."
    coldbrew = "원액과 물을 1:3으로 희석해 원액 50ml로 한 잔을 만드시면 드립커피 한 잔과 비슷해요."
    guard = GuardedText([capsule, coldbrew], answers=[capsule, coldbrew], may_copy=[capsule])
    # not a copy from its start, but words of the cold brew entry, not of the capsule one
    assert guard.feed("1:3으로 희석해 원액 50ml로 한 잔을 만드시면 비슷해요. ") == ""
    assert guard.tripped and guard.reselected and not guard.unsupported
    # the same words are an answer when that entry fits the question as well
    guard = GuardedText([capsule, coldbrew], answers=[capsule, coldbrew])
    assert guard.feed("1:3으로 희석해 원액 50ml로 한 잔을 만드시면 비슷해요. ") != ""
    assert not guard.tripped


def test_an_answer_that_is_the_start_of_a_question_or_context_line_echoes_it():
    context = "현재 6개월 구매 금액 92,000원, 실버 등급까지 8,000원 남음"
    assert echoes("현재 6개월 구매 금액 92,000원", [context])  # the tuned model wrote this
    assert not echoes("현재 6개월", [context])  # too little said to call it an echo
    # the customer's own words said back count only from OPENING_CHARS letters on
    asked = ["구독 중에 원두 더 사면 할인 몇 프로?", "반품 배송비"]
    assert echoes("구독 중에 원두 더 사면 할인", asked, shortest=8)
    assert not echoes("반품 배송비는 3,000원입니다.", asked, shortest=8)
    assert echoes("반품 배송비는 3,000원입니다.", asked)  # (as an entry's question line it would)


def test_the_customers_question_said_back_or_a_fragment_is_not_an_answer():
    question = "구독 중에 원두 더 사면 할인 몇 프로?"
    guard = GuardedText(SOURCES + [question], answers=[ANSWER], asked=[question, ""])
    assert guard.feed("구독 중에 원두 더 사면 할인") == "" and guard.finish() == ""
    assert guard.tripped and guard.echoed and guard.why() == "a question said back"
    guard = GuardedText(SOURCES, answers=[ANSWER], asked=["반품 배송비"])
    assert guard.feed("기본 배송비는 3,000원입니다. ") == "기본 배송비는 3,000원입니다."
    # a whole answer too short to be one, unless it is an entry's whole answer
    guard = GuardedText(SOURCES, answers=[ANSWER])
    assert guard.feed("3,000원") == "" and guard.finish() == ""
    assert guard.tripped and guard.unsupported and not guard.invented
    guard = GuardedText(SOURCES, answers=[ANSWER, "네, 됩니다."])
    assert guard.feed("네 됩니다") == "" and guard.finish() == "네 됩니다" and not guard.tripped


def test_an_opening_closer_to_a_context_line_than_to_every_answer_is_never_shown():
    context = "회원등급: 브론즈, 최근 6개월 구매 금액 92,000원"
    answer = "최근 6개월 구매 금액이 100,000원 이상이면 실버 등급이 됩니다."
    question = "실버 등급 되려면 얼마 사야돼?"
    guard = GuardedText([context, answer], answers=[answer], questions=[context],
                        asked=[question])
    assert guard.feed("현재 6개월 구매 금액 92,000원") == "" and guard.finish() == ""
    assert guard.tripped and guard.echoed  # the tuned model wrote this, with 현재 for 최근
    # an answer rewording the entry's answer, with words of the question, is shown
    guard = GuardedText([context, answer], answers=[answer], questions=[context],
                        asked=[question])
    said = "실버 등급이 되려면 6개월 구매 금액이 100,000원 이상이어야 해요. "
    assert guard.feed(said) == said.strip() and not guard.tripped


def test_a_copy_that_ends_before_its_first_sentence_is_judged_whole():
    """A copied prefix does not wave the rest through: "기본 배송비는 " then the question said
    back is not shown; the entry's rest completes what was shown."""
    question = "배송비는 얼마인가요?"
    guard = GuardedText(SOURCES, answers=[ANSWER], asked=[question, ""])
    shown = feed_all(guard, ["기본 ", "배송비는 ", "얼마인가요? ", "알려주세요. "])
    assert shown == ["기본 ", "배송비는 ", "", ""]
    assert guard.tripped and guard.echoed and guard.finish() == ""
    assert "".join(shown) + guard.copied_rest() == ANSWER
    # a whole copied sentence opens an answer: what follows is checked sentence by sentence
    guard = GuardedText(SOURCES, answers=["배송비는 3,000원입니다. 주말에도 보내요."],
                        asked=[question, ""])
    shown = feed_all(guard, ["배송비는 3,000원입니다. ", "감사합니다. "])
    assert shown == ["배송비는 3,000원입니다. ", "감사합니다."] and not guard.tripped


def test_an_answer_the_token_limit_cut_never_shows_an_unfinished_number():
    """max_new_tokens ending an answer mid-sentence: the unfinished sentence is held back
    ("제주는 3" is no fact), and a cut copy is completed from its entry."""
    guard = GuardedText(SOURCES, answers=[ANSWER])
    assert guard.feed("배송비는 3,000원입니다. 제주는 3") == "배송비는 3,000원입니다."
    assert guard.finish(cut=True) == "" and guard.tripped and guard.cut
    assert guard.why() == "cut by the token limit"
    guard = GuardedText(SOURCES, answers=[ANSWER])  # the same text, ended by the model
    guard.feed("배송비는 3,000원입니다. 제주는 3")
    assert guard.finish() == "" and guard.invented == {("3", "")}  # (a bare 3 no entry states)
    guard = GuardedText(SOURCES, answers=[ANSWER])
    assert feed_all(guard, ["기본 배송비는 ", "3"]) == ["기본 배송비는 ", "3"]
    assert guard.finish(cut=True) == "" and guard.cut
    assert "기본 배송비는 3" + guard.copied_rest() == ANSWER
