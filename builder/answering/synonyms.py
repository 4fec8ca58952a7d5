"""Customers' words for the FAQ's words: the shipped Korean shop lexicon (prompts/synonyms_ko.txt)
plus a run's own synonyms file the owner edits (RUN/synonyms.txt, same format).

    lexicon = Lexicon.from_files(SHIPPED, run_dir / "synonyms.txt")
    lexicon.expand(["택비", "얼마"])          # ['택비', '얼마', '배송비']

A file holds one group per line, the FAQ-like word first: `배송비, 택배비, 배달비, 택비`;
`#` starts a comment. Each word is read as its Kiwi content morphemes (갈다 -> 갈, 분쇄하다 ->
분쇄), and wherever a text's morphemes hold a word of a group, the group's first word is added
to them: on the FAQ side (BM25 terms, the coverage words and nouns of every entry) and on the
customer's side alike, so "원두 갈아서 보내주실 수 있나요" and an entry that says "분쇄" share
the term 분쇄. Words are added, never replaced: the FAQ's own words still match as before.
"""

import hashlib
from pathlib import Path

from builder.errors import UserError

SHIPPED = Path(__file__).resolve().parents[2] / "prompts" / "synonyms_ko.txt"
RUN_FILE = "synonyms.txt"  # in the run folder: the owner's own groups


def read_groups(path: str | Path) -> list[list[str]]:
    """The groups of one synonyms file; a clear message naming the line for a bad one."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    groups = []
    for number, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()  # a comment may follow a group
        if not line:
            continue
        words = [w.strip() for w in line.replace("，", ",").split(",") if w.strip()]
        if len(words) < 2:
            raise UserError(f"{path} line {number}: a group needs at least two words separated "
                            f"by commas (the FAQ's word first), e.g. '배송비, 택배비'")
        groups.append(words)
    return groups


class Lexicon:
    """Word groups, matched on Kiwi content morphemes (builder.answering.text)."""

    def __init__(self, groups: list[list[str]]):
        self.groups = groups
        self.keys: dict[tuple[str, ...], str] = {}
        for group in groups:
            keys = [self._keys(w) for w in group]
            # a group naming a word an earlier group has joins it: that group's first word
            # stays the one all of them map to (the owner's file comes first)
            # (on a word's own reading: inside a sentence 상품권 reads as 상품, another group)
            known = [self.keys[ks[0]] for ks in keys if ks and ks[0] in self.keys]
            canon = known[0] if known else group[0].lower()
            for word_keys in keys:
                for key in word_keys:
                    self.keys.setdefault(key, canon)
        self.longest = max(map(len, self.keys), default=0)

    @staticmethod
    def _keys(word: str) -> list[tuple[str, ...]]:
        from builder.answering.text import content_morphemes

        # Kiwi may split a word differently inside a sentence ("디카페인 원두" -> 디 + 카페인):
        # both readings are keys
        alone = tuple(content_morphemes(word))
        in_sentence = tuple(content_morphemes(f"{word} 있나요"))
        if in_sentence[-1:] == ("있",):
            in_sentence = in_sentence[:-1]
        return [key for key in dict.fromkeys((alone, in_sentence)) if key]

    @classmethod
    def from_files(cls, *paths: str | Path) -> "Lexicon":
        """The groups of every file that exists, the first file's first."""
        groups = []
        for path in paths:
            if path and Path(path).is_file():
                groups += read_groups(path)
        return cls(groups)

    def to_json(self) -> dict:
        """The groups and their Kiwi keys, so loading an index reads no word again."""
        return {"groups": self.groups, "keys": [[list(k), c] for k, c in self.keys.items()]}

    @classmethod
    def from_json(cls, data) -> "Lexicon":
        if isinstance(data, list):  # an index saved with the groups only
            return cls(data)
        lexicon = cls([])
        lexicon.groups = data["groups"]
        lexicon.keys = {tuple(k): c for k, c in data["keys"]}
        lexicon.longest = max(map(len, lexicon.keys), default=0)
        return lexicon

    @property
    def sha256(self) -> str:
        return hashlib.sha256(repr(self.groups).encode()).hexdigest()

    def __bool__(self) -> bool:
        return bool(self.keys)

    def canons(self, morphemes: list[str]) -> list[str]:
        """The first words of the groups whose words `morphemes` hold, longest match first."""
        found, i = [], 0
        while i < len(morphemes):
            for n in range(min(self.longest, len(morphemes) - i), 0, -1):
                canon = self.keys.get(tuple(morphemes[i:i + n]))
                if canon is not None:
                    found.append(canon)
                    i += n
                    break
            else:
                i += 1
        return found

    def expand(self, morphemes: list[str]) -> list[str]:
        """`morphemes` with the first word of every group they hold added (once each)."""
        extra = [c for c in dict.fromkeys(self.canons(morphemes)) if c not in morphemes]
        return morphemes + extra

    def apply(self, query) -> None:
        """Add the groups' first words to a Query's morphemes and nouns (once)."""
        if not query.expanded:
            query.expanded = True
            if self.keys:
                canons = set(self.canons(query.morphemes))
                query.synonyms = canons - set(query.morphemes)
                query.nouns = query.nouns | canons
                query.morphemes = self.expand(query.morphemes)

    def variants(self, question: str, limit: int = 3) -> list[str]:
        """Up to `limit` rewordings of `question` with one of its words swapped for another word
        of its group ("배송비 얼마예요?" -> "택배비 얼마예요?"): nouns only, verbs inflect."""
        out = []
        for group in self.groups:
            nouns = [w for w in group if not w.endswith("다")]
            for word in sorted(nouns, key=len, reverse=True):
                if word in question:
                    out += [question.replace(word, other, 1) for other in nouns if other != word
                            and word not in other][:1]
                    break
        return out[:limit]
