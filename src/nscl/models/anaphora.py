"""Where a pronoun's referent is read: the order in which the candidate search (:mod:`.program_search`) measures
how far apart a subtree's words are.

The search prefers programs whose subtrees take runs of adjacent words (phrases nest). A pronoun breaks that: in
"find the gray cube; what size is the block left of it?" the relation "left of" takes the gray cube, four words
back, and the adjacency prefers the reading "the gray cube left of the block". Forward chains ("start at A, move to
the B right of it, then to the C behind that one") break it at every step. So the search reads the words in the
order the pronouns imply: each referent moved to where its pronoun stands ("what size is the block left of [the
gray cube]", "the C behind [the B right of [A]]").

The rule, over the question's *chunks* (a run of concept words, a relation word, an attribute word) in word order:

* a run of concept words starts a new phrase, except right after a relation word, whose object it is ("the cube
  left of the red ball" is one phrase); relation and attribute words join the current phrase;
* a pronoun right after a relation word ("left of it", "behind that one", "right of the former") is that
  relation's object: its referent phrase moves to the pronoun. "it", "them" and "that/this one" refer to the most
  recent phrase before the pronoun's own; "the former" / "the latter" to the first / last of the phrases that
  hold no pronoun ("consider A and B; does the C left of the former match the D behind the latter");
* "there" right after a run of concept words is a place: the latest phrase that opens with a relation word moves
  after it ("looking left of the cube, which shape does the red thing there have": "the red thing [left of the
  cube]").

A pronoun anywhere else ("is it red", "does it share its size with the ball", "is there a cube") moves nothing.
Pure Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

_BACK = frozenset({"it", "them"})  # the most recent phrase
_DEMONSTRATIVES = frozenset({"that", "this"})  # "that one", "this one": the most recent phrase
_FORMER, _LATTER, _THERE = "former", "latter", "there"


@dataclass
class _Phrase:
    chunks: list[int] = field(default_factory=list)
    hosts: bool = False  # it took a referent by a pronoun


def pronoun_at(tokens: Sequence[str], i: int) -> str | None:
    """The kind of pronoun at token ``i`` ("back", "former", "latter", "there"), None where there is none."""
    t = tokens[i]
    if t in _BACK or (t == "one" and i > 0 and tokens[i - 1] in _DEMONSTRATIVES):
        return "back"
    if t in (_FORMER, _LATTER, _THERE):
        return t
    return None


def reading_order(
    tokens: Sequence[str], starts: Sequence[int], concept_run: Sequence[bool], relation: Sequence[bool]
) -> list[int]:
    """The order (a permutation of chunk indices) in which to read the chunks: chunk k starts at token
    ``starts[k]`` (increasing), is a run of concept words (``concept_run[k]``) or a relation word
    (``relation[k]``, which a lone word may be as well as a concept). Without pronouns after a relation word, the
    word order."""
    phrases: list[_Phrase] = []
    events = sorted(
        [(s, 0, k) for k, s in enumerate(starts)]
        + [(i, 1, -1) for i in range(len(tokens)) if pronoun_at(tokens, i) is not None]
    )
    last_relation = False  # the last chunk or pronoun was a relation word (awaiting its object)
    last_concept = False  # the last chunk was a run of concept words ("the red thing [there]")
    for pos, is_pronoun, k in events:
        if is_pronoun:
            kind = pronoun_at(tokens, pos)
            if kind == _THERE:
                # "looking left of the cube, which shape does the red thing there have": a place named by a
                # phrase that opens with a relation word goes after the phrase just named
                place = [p for p in phrases[:-1] if relation[p.chunks[0]] and not concept_run[p.chunks[0]]]
                if place and last_concept:
                    phrases.remove(place[-1])
                    phrases[-1].chunks.extend(place[-1].chunks)
                    phrases[-1].hosts = True
            elif last_relation and phrases:
                host = phrases[-1]
                earlier = phrases[:-1]
                if kind == "back":
                    ref = earlier[-1] if earlier else None
                else:
                    plain = [p for p in earlier if not p.hosts]
                    ref = (plain[0] if kind == _FORMER else plain[-1]) if plain else None
                if ref is not None:
                    phrases.remove(ref)
                    host.chunks.extend(ref.chunks)
                    host.hosts = True
            last_relation = last_concept = False
            continue
        if concept_run[k] and not (last_relation and phrases):
            phrases.append(_Phrase([k]))
        elif phrases:
            phrases[-1].chunks.append(k)
        else:
            phrases.append(_Phrase([k]))
        last_relation = relation[k] and not concept_run[k]
        last_concept = concept_run[k]
    return [k for p in phrases for k in p.chunks]
