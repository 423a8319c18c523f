"""Pronouns in the candidate search (``nscl.models.anaphora``): where a referent is read, and what the search
finds with it."""

from __future__ import annotations

import pytest

from nscl.models.anaphora import pronoun_at, reading_order
from nscl.models.grammar import Grammar, Lexicon
from nscl.models.program_search import AnswerShape, SearchLimits, search_programs, signature
from nscl.program import program_from_str
from nscl.vocab import tokenize

C, R, A = "concept", "relation", "attribute"
LIMITS = SearchLimits(max_expansions=5000)  # the trainer's (parser.search_expansions)


def order(words: str, kinds: dict[str, str]) -> list[str]:
    """The reading order of a sentence whose chunks are the words named in ``kinds`` (one word each)."""
    tokens = words.split()
    starts = [i for i, t in enumerate(tokens) if t in kinds]
    got = reading_order(
        tokens, starts, [kinds[tokens[i]] == C for i in starts], [kinds[tokens[i]] == R for i in starts]
    )
    return [tokens[starts[k]] for k in got]


def test_without_pronouns_the_word_order():
    kinds = {"cube": C, "left": R, "ball": C, "size": A}
    assert order("what size is the cube left of the ball", kinds) == ["size", "cube", "left", "ball"]


def test_a_pronoun_after_a_relation_takes_the_previous_phrase():
    kinds = {"cube": C, "size": A, "block": C, "left": R}
    # "find the cube; what size is the block left of [the cube]" (the attribute word went with the cube's phrase)
    assert order("find the cube ; what size is the block left of it", kinds) == [
        "block",
        "left",
        "cube",
        "size",
    ]


def test_a_forward_chain_nests_each_step_in_the_next():
    kinds = {"sphere": C, "rubber": C, "right": R, "large": C, "behind": R, "cubes": C, "left": R}
    text = (
        "start at the sphere , move to the rubber item right of it , then to the large thing behind that one ; "
        "how many cubes are left of it"
    )
    assert order(text, kinds) == ["cubes", "left", "large", "behind", "rubber", "right", "sphere"]


def test_former_and_latter_take_the_first_and_last_phrase_without_a_pronoun():
    kinds = {"cube": C, "ball": C, "gray": C, "right": R, "green": C, "left": R, "material": A}
    text = (
        "consider the cube and the ball ; does the gray thing right of the former match the green thing "
        "left of the latter in material"
    )
    got = order(text, kinds)
    assert got == ["gray", "right", "cube", "green", "left", "ball", "material"]


def test_a_pronoun_that_is_no_relation_s_object_moves_nothing():
    kinds = {"cube": C, "size": A, "ball": C}
    assert order("take the cube ; does it share its size with the ball", kinds) == ["cube", "size", "ball"]
    # an object of a relation that is a phrase, not a pronoun, joins that phrase
    kinds = {"cube": C, "left": R, "ball": C, "spheres": C, "behind": R}
    text = "take the cube left of the ball ; how many spheres are behind it"
    assert order(text, kinds) == ["spheres", "behind", "cube", "left", "ball"]


def test_there_after_a_thing_is_the_place_a_relation_named():
    kinds = {"left": R, "cube": C, "behind": R, "ball": C, "shape": A, "red": C}
    text = "looking left of the cube which sits behind the ball , which shape does the red thing there have"
    assert order(text, kinds) == ["red", "left", "cube", "behind", "ball", "shape"]
    # "is there ...", "are there ..." name no place
    kinds = {"cube": C, "left": R, "ball": C}
    assert order("is there a cube left of the ball", kinds) == ["cube", "left", "ball"]


@pytest.mark.parametrize(
    "tokens, i, kind",
    [
        (["left", "of", "it"], 2, "back"),
        (["behind", "that", "one"], 2, "back"),
        (["the", "red", "thing", "there"], 3, "there"),
        (["is", "at", "least", "one"], 3, None),
        (["the", "cube", "that", "is", "red"], 2, None),
        (["right", "of", "the", "former"], 3, "former"),
    ],
)
def test_pronoun_at(tokens, i, kind):
    assert pronoun_at(tokens, i) == kind


@pytest.fixture(scope="module")
def grammar(domain):
    return Grammar(domain), Lexicon.build(domain)


@pytest.mark.parametrize(
    "text, answer, true",
    [
        (
            "Find the gray shiny cube; what size is the block leftward of it?",
            "small",
            "query(size, filter(relate(filter(scene(), [cube, gray, metal]), left), [cube]))",
        ),
        (
            "Start at the tiny shiny sphere, move to the dull item on the right of it, then to the giant item "
            "behind that one; how many giant red cubes lie on the left of it?",
            "2",
            "count(filter(relate(filter(relate(filter(relate(filter(scene(), [metal, small, sphere]), right), "
            "[rubber]), behind), [large]), left), [cube, large, red]))",
        ),
        (
            "Consider the yellow item; does the matt object match the large reflective object at the back of it "
            "in colour?",
            "yes",
            "query_attribute_equal(color, filter(relate(filter(scene(), [yellow]), behind), [large, metal]), "
            "filter(scene(), [rubber]))",
        ),
        (
            "Looking in back of the metal cube which sits leftward of the little red shiny item found on the left "
            "of the red metal cube, which shape does the little red metal item there have?",
            "cube",
            "query(shape, filter(relate(filter(relate(filter(relate(filter(scene(), [cube, metal, red]), left), "
            "[metal, red, small]), left), [cube, metal]), behind), [metal, red, small]))",
        ),
    ],
)
def test_the_search_holds_the_reading_its_pronouns_say(domain, grammar, text, answer, true):
    """Measured in word order, each of these questions' true programs costs more than the search keeps."""
    g, lex = grammar
    tokens = tokenize(text)
    q = g.question_info(tokens, lex, text)
    shape = AnswerShape.of_wording(domain, answer, tokens, lex.attributes, lex.concepts, wording_roots=True)
    want = program_from_str(true, domain).canonical()
    read = search_programs(g, q, shape, LIMITS, 2, anaphora=True).programs
    plain = search_programs(g, q, shape, LIMITS, 2, anaphora=False).programs
    assert want in read
    assert want not in plain


def test_the_signature_says_where_pronouns_stand(domain, grammar):
    """Two questions with the same content words, one with a pronoun: their searches differ, so they must not
    share one."""
    g, lex = grammar
    shape = AnswerShape.of(domain, "small")
    a = "Find the gray cube; what size is the block left of it?"
    b = "Find the gray cube; what size is the block left of the thing?"
    qa, qb = (g.question_info(tokenize(t), lex, t) for t in (a, b))
    assert signature(qa, shape) != signature(qb, shape)
