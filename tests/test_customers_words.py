"""Guards customers' own words: the synonym lexicon (builder/answering/synonyms.py), the learned
decline gate (learned_gate.py), questions with two asks and follow-ups (grounding.py), the
question kinds of the eval (evaluation/scores.py) and the LLM judge (evaluation/judge.py)."""

import json

import pytest

from builder.answering.knowledge import Entry, Knowledge, knowledge_for
from builder.answering.synonyms import SHIPPED, Lexicon, read_groups
from builder.errors import UserError
from fixtures import ScriptedJudge

ENTRIES = [
    ("배송비는 얼마인가요?", "기본 배송비는 3,000원이며 30,000원 이상은 무료입니다."),
    ("원두를 분쇄해서 보내주실 수 있나요?", "네, 핸드드립·모카포트·에스프레소용으로 분쇄해 드립니다."),
    ("적립금은 언제 쌓이나요?", "구매확정 후 결제 금액의 1%가 적립금으로 쌓입니다."),
    ("반품 배송비는 얼마인가요?", "단순 변심 반품은 왕복 배송비 6,000원을 부담해 주셔야 합니다."),
    ("매장 영업시간은 어떻게 되나요?", "매장은 오전 9시부터 오후 8시까지 운영합니다."),
    ("주차할 수 있나요?", "매장 건물 뒤 공영주차장을 이용해 주세요. 2시간 무료입니다."),
]
LEXICON = [["배송비", "택배비", "택비"], ["분쇄", "갈다", "그라인딩"], ["적립금", "포인트"]]


def knowledge(groups=LEXICON, **options) -> Knowledge:
    entries = [Entry(i, i + 2, q, "", a) for i, (q, a) in enumerate(ENTRIES)]
    return Knowledge.build(entries, lexicon=Lexicon(groups), calibrate=False, **options)


# The lexicon


def test_a_customers_word_reaches_the_entry_that_uses_the_faqs_word():
    with_words, without = knowledge(), knowledge(groups=[])
    question = "원두 갈아서 보내줘요?"
    assert "분쇄" in with_words.query(question).morphemes
    assert "분쇄" not in without.query(question).morphemes
    assert with_words.search(question, 1)[0].entry.id == 1
    # the gate's shared-noun rule reads the same words
    fee = with_words.entries[0]
    assert with_words.query("택비 얼마예요").nouns & with_words.entry_nouns(fee)
    assert not without.query("택비 얼마예요").nouns & without.entry_nouns(fee)
    assert with_words.search("택비 얼마예요", 1)[0].entry.id == 0
    assert with_words.search("포인트 언제 쌓여요", 1)[0].entry.id == 2


def test_the_lexicon_adds_words_and_never_replaces_them():
    lexicon = Lexicon(LEXICON)
    assert lexicon.expand(["택비", "얼마"]) == ["택비", "얼마", "배송비"]
    assert lexicon.expand(["배송비", "얼마"]) == ["배송비", "얼마"]  # the FAQ's word already
    assert lexicon.variants("배송비는 얼마인가요?") == ["택배비는 얼마인가요?"]


def test_the_shipped_lexicon_reads_and_names_no_word_twice():
    groups = read_groups(SHIPPED)
    words = [w for g in groups for w in g]
    assert len(groups) >= 100 and len(words) == len(set(words))
    lexicon = Lexicon(groups)
    from builder.answering.text import content_morphemes

    assert "분쇄" in lexicon.canons(content_morphemes("원두 갈아서 보내주실 수 있나요"))
    # words a shop tells apart stay apart
    assert "환불" not in lexicon.canons(content_morphemes("교환 되나요"))


def test_a_group_naming_an_earlier_groups_word_joins_it():
    # the owner's file says 택배비 first; the shipped group's 배달비 still reaches it
    lexicon = Lexicon([["택배비", "배송비"], ["배송비", "배달비", "택비"]])
    assert lexicon.canons(["배달", "비"]) == ["택배비"] and lexicon.canons(["택비"]) == ["택배비"]


def test_a_bad_synonyms_file_names_its_line(tmp_path):
    bad = tmp_path / "synonyms.txt"
    bad.write_text("# 우리 가게 말\n배송비, 택비  # 택비: 고객들 말\n몽실이\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"synonyms.txt line 3: a group needs at least two words"):
        read_groups(bad)
    bad.write_text("배송비, 택비  # 택비: 고객들 말\n", encoding="utf-8")
    assert read_groups(bad) == [["배송비", "택비"]]  # the comment is not a word


def test_the_runs_own_synonyms_file_comes_first_and_is_kept_with_the_index(tmp_path):
    from builder.config import RagConfig

    run = tmp_path / "run"
    run.mkdir()
    (run / "synonyms.txt").write_text("주차, 차댈곳\n", encoding="utf-8")
    entries = [Entry(i, i + 2, q, "", a) for i, (q, a) in enumerate(ENTRIES)]
    kb = knowledge_for(entries, RagConfig(), run_dir=run, calibrate=False)
    assert kb.lexicon.groups[0] == ["주차", "차댈곳"]
    assert kb.settings["synonyms"]["groups"] == len(read_groups(SHIPPED)) + 1
    assert kb.search("차댈곳 있어요?", 1)[0].entry.id == 5
    loaded = Knowledge.load(kb.save(tmp_path / "knowledge"))
    assert loaded.lexicon.groups == kb.lexicon.groups
    assert loaded.search("차댈곳 있어요?", 1)[0].entry.id == 5


def test_a_lexicon_match_lets_a_question_sit_just_under_the_dense_threshold():
    from builder.answering import gate

    kb = knowledge()
    for question, matched in (("택비 얼마예요", True), ("배송비 얼마예요", False)):
        query = kb.query(question)
        hits = kb.search(query, 3)
        assert bool(query.synonyms) == matched  # 택비 brought in 배송비; 배송비 is the FAQ's own
        best = max(h.dense for h in hits)
        kb.settings["gate"]["dense_threshold"] = best + gate.LEXICON_SLACK / 2
        assert kb.relevant(query, hits) == matched
        kb.settings["gate"]["dense_threshold"] = best + gate.LEXICON_SLACK * 2
        assert not kb.relevant(query, hits)


# The learned gate


def test_the_learned_gate_is_trained_on_the_faq_and_stored_as_numbers():
    from fixtures import sample_knowledge

    from builder.answering.learned_gate import FEATURES, probability, train_gate

    kb = sample_knowledge(30)
    model = train_gate(kb)
    json.dumps(model)  # plain numbers: index.json holds it, no pickle
    assert len(model["weights"]) == len(FEATURES) and 0 < model["threshold"] < 1
    assert model["held_out"]["rewrites_passed"] >= 0.8 and model["questions"] > 60
    kb.settings["gate"]["learned"] = model
    asked = kb.query("배송비 얼마에요")
    off = kb.query("오늘 서울 날씨 어때?")
    assert probability(kb, asked, kb.search(asked)) > probability(kb, off, kb.search(off))
    model["threshold"] = 1.01  # the gate is the model's probability against its threshold
    assert not kb.relevant(asked, kb.search(asked))
    model["threshold"] = 0.0
    assert kb.relevant(off, kb.search(off))


# Two asks in one question; follow-ups


def test_a_question_with_two_asks_is_split_into_them():
    from builder.answering.grounding import two_asks

    assert two_asks("배송비랑 반품비 각각 얼마예요?") == ["배송비 얼마예요?", "반품비 얼마예요?"]
    assert two_asks("매장 몇 시에 열어요? 주차도 돼요?") == ["매장 몇 시에 열어요?", "주차도 돼요?"]
    assert two_asks("스티커는 몇 개부터 되고 납품은 몇 kg부터예요?") == [
        "스티커는 몇 개부터 되고", "납품은 몇 kg부터예요?"]
    assert two_asks("배송비 얼마예요?") == []


def test_two_asks_are_answered_each_from_its_own_entry_and_checked_against_it():
    from builder.answering.chatbot import Chatbot
    from builder.config import RagConfig
    from builder.prompts import load_template

    prompts = []

    class Engine:  # answers each prompt with what the test scripts for its entry
        name, encode, context_length = "scripted", None, None

        def stream(self, prompt, **options):
            prompts.append(prompt)
            # the shop's opening hours are right; the parking answer invents a fee
            yield "오전 9시부터 오후 8시까지 운영합니다." if "영업시간" in prompt else "주차비 5,000원입니다."

    bot = Chatbot(Engine(), load_template("korean"), knowledge=knowledge(), rag=RagConfig())
    reply = bot.reply("매장 영업시간이랑 주차 되는지 알려주세요")
    assert len(prompts) == 2
    assert "영업시간" in prompts[0] and "공영주차장" not in prompts[0]
    assert "공영주차장" in prompts[1] and "오후 8시" not in prompts[1]
    first, second = reply.text.split("\n")
    assert first == "오전 9시부터 오후 8시까지 운영합니다."
    # 5,000원 is in no entry: the guard shows the parking entry's own answer instead
    assert second == ENTRIES[5][1] and reply.guarded and not reply.declined
    assert [h.entry.id for h in reply.sources] == [4, 5]
    # a customer who stops the answer after the first ask keeps it, with its source
    from builder.answering.guard import Reply

    stopped = Reply()
    stream = bot.stream("매장 영업시간이랑 주차 되는지 알려주세요", reply=stopped)
    first = next(stream)
    stream.close()
    assert stopped.text == first and [h.entry.id for h in stopped.sources] == [4]


def test_a_follow_up_is_read_with_its_earlier_question_first():
    from builder.answering.grounding import Grounder
    from builder.config import RagConfig
    from builder.prompts import load_template

    grounder = Grounder(knowledge(), RagConfig(), load_template("korean"))
    g = grounder.ground("반품은요?", history=["배송비는 얼마예요?"])
    assert g.earlier == "배송비는 얼마예요?" and g.hits[0].entry.id == 3


# The eval's question kinds


def test_question_kinds_are_read_and_scored(tmp_path):
    from builder.answering.guard import Reply
    from builder.evaluation.scores import read_questions, score_questions

    path = tmp_path / "questions.csv"
    path.write_text(
        "question,expected,kind,line,earlier\n"
        "택비 얼마,\"3,000원\",vocabulary,2,\n"
        "반품은요?,\"6,000원\",follow_up,5,배송비 얼마예요?\n"
        "배송비랑 반품비 얼마?,\"3,000원|6,000원\",two_entry,2;5,\n"
        "원두 카페인 몇 mg?,,near_miss,3,\n", encoding="utf-8")
    questions = read_questions(path)
    assert questions[1]["earlier"] == "배송비 얼마예요?" and questions[2]["lines"] == [2, 5]
    replies = [Reply(text="3,000원입니다."), Reply(text="6,000원이에요."),
               Reply(text="배송비 3,000원"),  # one of the two facts: not right
               Reply(text="죄송합니다", declined=True)]
    scores = score_questions(questions, replies, "죄송합니다")
    assert scores["vocabulary_facts"] == 1.0 and scores["follow_up_facts"] == 1.0
    assert scores["two_entry_facts"] == 0.0 and scores["near_miss_declined"] == 1.0
    from builder.evaluation.scores import verdict

    baseline = {**scores, "follow_up_facts": 1.0, "two_entry_facts": 0.5}
    lines = verdict({"splits": {}, "questions": {"tuned": {**scores, "runaway": 0},
                                                 "retrieval": baseline}})
    assert lines == ["The fine-tuned bot is below the retrieval-only baseline on two-entry fact "
                     "accuracy: 0% vs 50%."]
    bad = tmp_path / "bad.csv"
    bad.write_text("question,expected,kind,line,earlier\n반품은요?,\"6,000원\",follow_up,5,\n",
                   encoding="utf-8")
    with pytest.raises(UserError, match="line 2: a follow_up needs the earlier question"):
        read_questions(bad)


# The LLM judge, against a scripted judge server


@pytest.fixture
def judge_server():
    server = ScriptedJudge()
    yield server
    server.close()


def _replies():
    from builder.answering.guard import Reply
    from builder.answering.knowledge import Hit

    kb = knowledge()
    hit = Hit(kb.entries[0], 1.0, 1.0, 1.0)
    tuned = [Reply(text="배송비는 3,000원입니다.", sources=[hit]),
             Reply(text="배송비는 5,000원입니다.", sources=[hit])]
    base = [Reply(text="배송비는 4,000원입니다.", sources=[hit]),
            Reply(text="배송비는 5,000원입니다.", sources=[hit])]
    return ["배송비 얼마?", "택비 얼마?"], {"tuned": tuned, "base": base}


def test_the_judge_grades_answers_compares_them_and_is_checked_against_the_facts(
        judge_server, monkeypatch):
    from builder.evaluation.judge import JudgeSpec, judge_replies

    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", "sk-secret-judge")
    questions, replies = _replies()
    facts = {"tuned": [True, False], "base": [False, True]}  # the second base fact check is off
    logged = []
    out = judge_replies(JudgeSpec(judge_server.url, "judge-model", "JUDGE_KEY_FOR_TEST"),
                        questions, replies, facts, "죄송합니다", log=logged.append)
    tuned, base = out["systems"]["tuned"], out["systems"]["base"]
    assert tuned == {"judged": 2, "unjudged": 0, "faithful": 0.5, "helpful": 3.5,
                     "agrees_with_facts": 1.0, "compared_with_facts": 2}
    assert base["faithful"] == 0.0 and base["agrees_with_facts"] == 0.5
    # the first pair: tuned states the fee, whichever side it is shown on; the second is equal
    assert out["pairwise"] == {"tuned": 1, "base": 0, "tie": 1, "unjudged": 0}
    assert out["grades"]["tuned"][0] == {"faithful": True, "helpful": 5}
    assert all(r["auth"] == "Bearer sk-secret-judge" for r in judge_server.requests)
    assert "sk-secret" not in json.dumps(out) and judge_server.url not in json.dumps(out)


@pytest.mark.parametrize("behaviour", ["prose", "refuse", "slow", "down"])
def test_a_judge_that_garbles_refuses_stalls_or_fails_leaves_answers_unjudged(
        judge_server, behaviour):
    from builder.evaluation.judge import JudgeSpec, judge_replies

    judge_server.behaviour = behaviour
    questions, replies = _replies()
    questions, tuned = questions * 2, replies["tuned"] * 2
    logged = []
    spec = JudgeSpec(judge_server.url, "judge-model", "NO_SUCH_KEY_VAR", timeout_s=0.5,
                     retries=0)
    out = judge_replies(spec, questions, {"tuned": tuned}, {"tuned": [True, False] * 2},
                        "죄송합니다", log=logged.append)
    assert out["systems"]["tuned"]["judged"] == 0 and out["systems"]["tuned"]["unjudged"] == 4
    assert out["systems"]["tuned"]["faithful"] is None
    if behaviour in ("slow", "down"):  # failed requests: given up on after three in a row
        assert len(judge_server.requests) == 3 and out["gave_up"]
    else:  # it answered, just not with a grade: every answer was asked
        assert len(judge_server.requests) == 4 and not out["gave_up"]
    assert judge_server.url not in " ".join(logged) + json.dumps(out)


def test_the_judges_flags_are_checked_before_any_answer_and_a_pasted_key_is_not_echoed():
    from builder.evaluation.judge import check_spec

    with pytest.raises(UserError, match="go together"):
        check_spec("http://127.0.0.1:8000/v1", None, "OPENAI_API_KEY")
    with pytest.raises(UserError, match="must be an http") as error:
        check_spec("127.0.0.1:abc/v1", "judge", "OPENAI_API_KEY")
    with pytest.raises(UserError, match="NAME of an environment variable") as error:
        check_spec("http://127.0.0.1:8000/v1", "judge", "sk-live-1234567890")
    assert "sk-live" not in str(error.value)
    assert check_spec("http://127.0.0.1:8000/v1", "judge", "MY_KEY").api_key_env == "MY_KEY"
