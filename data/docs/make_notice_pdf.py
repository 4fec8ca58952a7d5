"""Writes holiday_notice.pdf, the sample notice of 하루커피 (a PDF for `builder generate`).

    pip install reportlab && python data/docs/make_notice_pdf.py

reportlab is needed only here, not by the builder. The Korean text uses reportlab's built-in
HYGothic-Medium CID font, which PDF readers supply themselves, so the file stays small and
embeds no font; its text layer is what `builder generate` reads (pypdf).
"""

from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

FONT = "HYGothic-Medium"
TITLE = "[공지] 설 연휴 배송 및 매장 운영 안내"
SECTIONS = [
    ("", ["안녕하세요, 하루커피입니다. 설 연휴 동안의 배송과 매장, 고객센터 운영을 "
          "안내해 드립니다."]),
    ("■ 매장 운영", [
        "망원동 매장은 설날 당일 하루 쉽니다. 그 밖의 연휴 기간 운영 일정은 인스타그램 "
        "@harucoffee_mangwon과 홈페이지 공지사항에서 알려 드립니다.",
        "매장은 평소처럼 매주 월요일에 쉬며, 화요일부터 일요일까지 오전 9시부터 오후 8시까지 "
        "문을 엽니다(음료 마지막 주문 오후 7시 30분).",
    ]),
    ("■ 배송", [
        "연휴 전 마지막 평일 오후 1시까지 결제하신 주문은 그날 출고됩니다. 그 뒤에 결제하신 "
        "주문은 연휴가 끝난 뒤 첫 영업일에 순서대로 출고됩니다.",
        "연휴 직후에는 택배 물량이 많아 출고 후 받으시기까지 평소(1~2일)보다 늦어질 수 있습니다.",
    ]),
    ("■ 고객센터", [
        "고객센터(02-0000-0000)는 주말과 공휴일에 쉽니다. 연휴 중에는 카카오톡 채널 '하루커피'나 "
        "help@harucoffee.example로 문의를 남겨 주시면, 연휴 후 첫 영업일부터 순서대로 "
        "답변드립니다.",
    ]),
    ("■ 설 선물 사전 예약", [
        "설 선물 사전 예약은 설 2주 전부터 받습니다. 드립백 선물세트(20개입, 쇼핑백 포함)는 "
        "25,000원이며, 쇼핑백을 더 원하시면 한 장에 500원입니다.",
        "선물 포장(크라프트 박스와 리본)은 2,000원이고, 메시지 카드는 100자까지 무료로 넣어 "
        "드립니다. 선물 포장한 상품에는 가격표를 넣지 않습니다.",
    ]),
    ("", ["새해 복 많이 받으세요. 하루커피 드림"]),
]


def main() -> Path:
    pdfmetrics.registerFont(UnicodeCIDFont(FONT))
    body = ParagraphStyle("body", fontName=FONT, fontSize=11, leading=17, wordWrap="CJK")
    heading = ParagraphStyle("heading", parent=body, fontSize=13, leading=20, spaceBefore=8)
    title = ParagraphStyle("title", parent=body, fontSize=16, leading=24)
    story = [Paragraph(TITLE, title), Spacer(1, 8)]
    for name, paragraphs in SECTIONS:
        if name:
            story.append(Paragraph(name, heading))
        story += [Paragraph(text, body) for text in paragraphs]
        story.append(Spacer(1, 4))
    path = Path(__file__).with_name("holiday_notice.pdf")
    SimpleDocTemplate(str(path), pagesize=A4, title="하루커피 설 연휴 안내", author="하루커피",
                      invariant=1).build(story)
    return path


if __name__ == "__main__":
    print(main())
