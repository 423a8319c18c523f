"""Reading questions as people type them: normalisation before tokenisation, and help with unknown words.

:func:`normalize` rewrites what a tokeniser would otherwise break into meaningless pieces: typographic quotes,
contractions ("What's", "isn't", "aren't", "there're") and the possessive ``'s`` ("the cube's color" -> "the
cube color"). It is the identity on text without apostrophes, so parsers trained before it read the same tokens.
:func:`suggest` and :func:`correct` use edit distance (rapidfuzz) against the words a parser knows: suggestions
for a refusal message, and corrections of near misses ("cilinder" -> "cylinder") that ``nscl ask`` applies and
reports. :func:`correct` also reads an unknown form of a known verb as that form ("sat" -> "sits"), with
lemminflect's English lemma and inflection tables. :func:`unknown_thing` finds an unknown word that may name
something the parser has no concept for ("the zebra", "wooden cubes": refuse), as opposed to one that only shapes
the sentence ("currently", "in addition": read as ``<UNK>``). :func:`asked_answer` reads what kind of answer the
wording asks for.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import lemminflect
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from .vocab import tokenize

# Contractions: whole words (lower case) -> their expansion. "'s" after other words is read as a possessive.
_CONTRACTIONS = {
    "what's": "what is",
    "that's": "that is",
    "there's": "there is",
    "here's": "here is",
    "it's": "it is",
    "how's": "how is",
    "where's": "where is",
    "who's": "who is",
    "which's": "which is",
    "isn't": "is not",
    "aren't": "are not",
    "wasn't": "was not",
    "weren't": "were not",
    "doesn't": "does not",
    "don't": "do not",
    "didn't": "did not",
    "can't": "can not",
    "cannot": "can not",
    "won't": "will not",
    "haven't": "have not",
    "hasn't": "has not",
    "there're": "there are",
    "they're": "they are",
    "what're": "what are",
    "i'm": "i am",
    "let's": "let us",
}
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})
_APOSTROPHE_WORD = re.compile(r"[A-Za-z]+'[A-Za-z]*")


def normalize(text: str) -> str:
    """``text`` with typographic quotes made plain, contractions expanded and possessive ``'s`` dropped; case
    and everything else as given (the tokeniser lower-cases)."""
    text = text.translate(_QUOTES)
    if "'" not in text:
        return text

    def expand(m: re.Match[str]) -> str:
        word = m.group(0)
        low = word.lower()
        if low in _CONTRACTIONS:
            return _CONTRACTIONS[low]
        if low.endswith("'s"):  # possessive: "the cube's color"
            return word[:-2]
        if low.endswith("s'"):  # plural possessive: "the cubes' colors"
            return word[:-1]
        return word

    return _APOSTROPHE_WORD.sub(expand, text)


def question_tokens(text: str) -> list[str]:
    """The tokens a parser reads: :func:`normalize`, then :func:`nscl.vocab.tokenize`."""
    return tokenize(normalize(text))


def suggest(word: str, known: Collection[str], limit: int = 3) -> list[str]:
    """Up to ``limit`` known words closest to ``word`` in spelling (similarity at least 60 of 100), best first."""
    words = [w for w in known if w.isalpha()]
    hits = process.extract(word, words, scorer=fuzz.ratio, limit=limit, score_cutoff=60)
    return [h[0] for h in sorted(hits, key=lambda h: (-h[1], h[0]))]


def near_miss(word: str, known: Collection[str]) -> str | None:
    """The one known word a typo of ``word`` most likely is: within one edit (two for words of 8 letters or
    more), words of at least 4 letters, and no other known word as close; else None."""
    if len(word) < 4 or not word.isalpha():
        return None
    limit = 2 if len(word) >= 8 else 1
    close = [(Levenshtein.distance(word, w, score_cutoff=limit), w) for w in known if w.isalpha()]
    close = sorted((d, w) for d, w in close if d <= limit)
    if not close or (len(close) > 1 and close[1][0] == close[0][0]):
        return None
    return close[0][1]


def known_inflection(word: str, known: Collection[str]) -> str | None:
    """A known form of the verb ``word`` is a form of ("sat" -> "sits", "positioned" -> "positions"); None
    when there is none or ``word`` is no verb lemminflect knows. Only verbs: an adjective's inflections change
    its meaning ("larger" is not "large") and nouns' plurals are the lexicon's."""
    for pos, lemmas in lemminflect.getAllLemmas(word, upos="VERB").items():
        for lemma in lemmas:
            if lemma in known and lemma != word:
                return lemma
            forms = lemminflect.getAllInflections(lemma, upos=pos)
            hits = sorted({f for fs in forms.values() for f in fs if f in known and f != word})
            if hits:
                return hits[0]
    return None


def may_name_a_thing(word: str) -> bool:
    """Whether an unknown word may name an object, a property or a relation the parser has no concept for: a
    noun or adjective reading (lemminflect), unless it is a verb's participle ("situated", "resting"), or a
    word lemminflect does not know at all. Such a word is refused; any other is read as ``<UNK>``."""
    readings = lemminflect.getAllLemmas(word)
    if not readings:
        return True
    if "VERB" in readings and word.endswith(("ed", "ing")):
        return False
    return bool(readings.keys() & {"NOUN", "ADJ", "PROPN", "NUM"})


# Closed-class words lemminflect also reads as nouns or adjectives; they never name a property.
_CLOSED_CLASS = frozenset(
    [
        "such",
        "former",
        "latter",
        "other",
        "others",
        "same",
        "own",
        "only",
        "whole",
        "entire",
        "very",
        "exact",
        "particular",
        "certain",
        "various",
        "several",
        "both",
        "either",
        "neither",
        "more",
        "most",
        "less",
        "least",
        "few",
        "fewer",
        "much",
        "next",
        "last",
        "first",
        "second",
        "third",
        "up",
        "down",
        "out",
        "off",
        "over",
        "under",
        "one",
        "ones",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
    ]
)
# Words after which a word with a verb reading is that verb ("you call", "to describe", "would count").
_BEFORE_VERBS = frozenset(
    [
        "i",
        "you",
        "we",
        "they",
        "to",
        "would",
        "could",
        "can",
        "will",
        "shall",
        "should",
        "do",
        "does",
        "did",
        "please",
    ]
)
# Words after which a noun or adjective names the object talked about ("the zebra", "many zebras").
_DETERMINERS = frozenset(
    {"the", "a", "an", "any", "many", "some", "all", "every", "each", "that", "this", "those", "these", "no"}
)


def unknown_thing(
    tokens: Sequence[str], known: Collection[str], concept_words: Collection[str]
) -> str | None:
    """The first unknown word of ``tokens`` that may name something the parser has no concept for, where a thing
    is named: a noun or adjective (:func:`may_name_a_thing`) right after a determiner or a concept word ("the
    zebra", "many zebras", "the big zebra") or right before a concept word ("wooden cubes", "pink ball").
    Unknown words elsewhere ("in addition", "currently", "at the same time") only shape the sentence."""
    for i, w in enumerate(tokens):
        if w in known or w in _CLOSED_CLASS or not may_name_a_thing(w):
            continue
        prev = tokens[i - 1] if i > 0 else ""
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if prev in _BEFORE_VERBS and "VERB" in lemminflect.getAllLemmas(w):
            continue  # "you would call", "to describe"
        if prev in _DETERMINERS or prev in concept_words or nxt in concept_words:
            return w
    return None


@dataclass(frozen=True)
class Correction:
    typed: str
    read_as: str


def correct(text: str, known: Collection[str]) -> tuple[str, list[Correction]]:
    """``text`` as tokens joined by spaces, with each unknown word that is an inflection of a known word
    (:func:`known_inflection`) or a near miss of exactly one known word (:func:`near_miss`) replaced by it, and
    the corrections made."""
    out: list[str] = []
    fixes: list[Correction] = []
    for w in question_tokens(text):
        fix = (known_inflection(w, known) or near_miss(w, known)) if w not in known else None
        if fix is not None:
            fixes.append(Correction(w, fix))
        out.append(fix or w)
    return " ".join(out), fixes


def unknown_word_message(text: str, word: str, known: Collection[str]) -> str:
    """The refusal for a question with a word the parser does not know, with the closest known words."""
    close = suggest(word, known)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"cannot parse {text!r}: unknown word {word!r} (not in the parser's vocabulary){hint}"


# --------------------------------------------------------------------------------------------- answer kinds
BOOL_ANSWER, COUNT_ANSWER = "yes/no", "count"
# yes/no questions that compare two counts, by the NS-CL op that answers them
MORE, FEWER, AS_MANY = "count_greater", "count_less", "count_equal"
_YES_NO_OPENERS = frozenset({"is", "are", "does", "do", "was", "were", "has", "have"})
_COUNT_NOUNS = frozenset({"number", "numbers", "tally", "count", "total", "totals"})
_CLAUSE_BREAKS = frozenset({";", ":", "-"})  # only the last clause says what is asked
# A yes/no question that compares two counts: "outnumber", "exceed", "the greater one", "in the majority";
# "the lesser one", "in the minority", "fall short of"; "more"/"fewer"/"less" with "than" or "numerous"
_MORE_WORDS = frozenset({"outnumber", "outnumbers", "higher", "exceed", "exceeds", "greater", "majority"})
_FEWER_WORDS = frozenset({"lower", "lesser", "minority"})
_COMPARED = frozenset({"than", "numerous", "plentiful"})


def _last_clause(tokens: Sequence[str]) -> list[str]:
    """The words (no punctuation) after the last clause break: only the last clause says what is asked."""
    breaks = [i for i, t in enumerate(tokens) if t in _CLAUSE_BREAKS]
    return [t for t in tokens[breaks[-1] + 1 if breaks else 0 :] if t.isalnum()]


def asked_answer(
    tokens: Sequence[str], attribute_words: Mapping[str, str], concept_words: Collection[str]
) -> str | None:
    """What kind of answer the wording of a question asks for, where it is plain: ``"count"`` ("how many ...",
    "what number of ..."), ``"yes/no"`` (a clause opening with is/are/does/do/was/were/has/have), or, finer, a
    comparison of two counts (``count_greater`` for "more ... than", "outnumber", "exceed", "higher", "the greater
    one", "the majority"; ``count_less`` for "fewer/less ... than", "outnumbered", "fall short of", "lower", "the
    lesser one", "the minority"; ``count_equal`` for "as many", "as often", "as numerous", "the same number"; a
    comparison may also open with "could you tell me if" or "if you counted"),
    or an attribute name ("what color is ...", "which shape ...", "what is the size of ...", "what is its
    material", "what is ... made of"). Other openings ("tell me ...", "how would you describe ...") are read
    by what they contain: "whether" (yes/no), "how many", "the number of", "count" (a count), or one attribute
    named as "... is what size", "the <attribute> of", "its <attribute>". None where the wording does not say.
    Only the last clause counts ("There is a cube; what color is it?", after ";", ":" or a dash).
    ``attribute_words`` maps words to attributes (a parser's lexicon); words that also name a concept ("big")
    are not read as attributes."""
    clause = _last_clause(tokens)
    if not clause:
        return None

    def attribute(word: str) -> str | None:
        return attribute_words.get(word) if word not in concept_words else None

    first = clause[0]
    words, pairs = set(clause), set(zip(clause, clause[1:]))
    if (
        clause[:2] == ["how", "many"]
        or clause[:3] == ["what", "number", "of"]
        or clause[:4] == ["what", "is", "the", "number"]
    ):
        return COUNT_ANSWER
    if first in _YES_NO_OPENERS or words & {"counting", "whether", "if"}:
        if "outnumbered" in words:
            return FEWER
        if words & _MORE_WORDS or ("more" in words and words & _COMPARED):
            return MORE
        if (
            words & _FEWER_WORDS
            or ("short" in words and words & {"fall", "falls"})
            or (words & {"fewer", "less"} and words & _COMPARED)
        ):
            return FEWER
        if pairs & {
            ("as", "many"),
            ("as", "often"),
            ("as", "numerous"),
            ("same", "number"),
            ("same", "result"),
            ("equal", "number"),
        } or (words & _COUNT_NOUNS and words & {"same", "equal", "identical", "match", "agree"}):
            return AS_MANY
    if first in _YES_NO_OPENERS:
        return BOOL_ANSWER
    if first in ("what", "which") and len(clause) > 1:
        if (a := attribute(clause[1])) is not None:
            return a
        if (
            clause[1] == "is"
            and len(clause) > 3
            and clause[2] in ("the", "its")
            and (a := attribute(clause[3]))
        ):
            return a if clause[2] == "its" or clause[4:5] == ["of"] else None
        if clause[-2:] == ["made", "of"] and (a := attribute_words.get("made")) is not None:
            return a  # "what is the small cube made of"
    # any other opening ("how would you describe ...", "tell me ...", "name ..."): a plain "whether" asks yes/no,
    # "how many" / "the number of" a count, and "the <attribute> of" that attribute
    if "whether" in words:
        return BOOL_ANSWER
    if ("how", "many") in pairs or ("number", "of") in pairs or "count" in clause[:2]:
        return COUNT_ANSWER
    if clause[-2:] == ["made", "of"] and (a := attribute_words.get("made")) is not None:
        return a  # "tell me what the cube is made of"

    # "... is what size?" names the asked attribute after a wh-word; else "the <attribute> of" or "its
    # <attribute>", when the clause names one attribute so ("made of" is no attribute's name here)
    def after(opener: str) -> set[str]:
        return {a for w0, w1 in pairs if w0 == opener and w1 != "made" and (a := attribute(w1)) is not None}

    before_of = {a for w0, w1 in pairs if w1 == "of" and w0 != "made" and (a := attribute(w0)) is not None}
    for named in (after("what"), after("which"), after("its") | before_of):
        if named:
            return named.pop() if len(named) == 1 else None
    return None


_EXISTENCE_WORDS = frozenset({"any", "anything", "another", "other", "else"})


def asks_existence(
    tokens: Sequence[str], attribute_words: Mapping[str, str], concept_words: Collection[str]
) -> bool:
    """Whether a yes/no question plainly asks if something exists: its last clause (as :func:`asked_answer` reads
    it) has "there" after the opening verb ("is there", "are there") or says "any", "another", "other", "else"
    ("does any other cube match the ball in size"), and compares no counts. An equality of two things' attributes
    ("does the cube match the ball in size") never says so; questions that ask it without these words ("does the
    big cube have a match in colour among the balls") are not caught."""
    if asked_answer(tokens, attribute_words, concept_words) != BOOL_ANSWER:
        return False
    clause = _last_clause(tokens)
    return clause[1:2] == ["there"] or bool(_EXISTENCE_WORDS.intersection(clause))


# words that may ask whether something exists ("is at least one ... present", "does some ... exist", "does the image
# show one or more ...", "can you spot any ..."): a yes/no question with none of them asks no existence
_MAY_EXIST_WORDS = _EXISTENCE_WORDS | frozenset(
    {"some", "something", "somewhere", "exist", "exists", "present", "anywhere", "least", "there"}
    | {"see", "spot", "find", "show", "shows", "contain", "contains", "among", "besides", "apart"}
)


def may_ask_existence(
    tokens: Sequence[str], attribute_words: Mapping[str, str], concept_words: Collection[str]
) -> bool:
    """For a question answered yes/no: False where its last clause has no word that may ask if something exists
    (those of :func:`asks_existence` and "some", "exist", "present", "at least", "one or more", "there", ...):
    "does the cube match the ball in size", "could you tell me if the cube and the ball share a colour", "the ball
    versus the cube: same size or not" compare two things, they ask no existence. True where the wording asks
    something else (a count, an attribute, a comparison of counts: it cannot tell)."""
    if asked_answer(tokens, attribute_words, concept_words) not in (BOOL_ANSWER, None):
        return True
    clause = _last_clause(tokens)
    return bool(_MAY_EXIST_WORDS.intersection(clause)) or ("or", "more") in set(zip(clause, clause[1:]))


def existence_wording(
    tokens: Sequence[str], attribute_words: Mapping[str, str], concept_words: Collection[str]
) -> bool | None:
    """What the wording of a question answered yes/no says of existence: True where it asks if something exists
    (:func:`asks_existence`), False where it cannot be asking (:func:`may_ask_existence`), None where it cannot
    tell."""
    if asks_existence(tokens, attribute_words, concept_words):
        return True
    return None if may_ask_existence(tokens, attribute_words, concept_words) else False
