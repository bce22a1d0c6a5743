"""A prompt as atomic facts, each with a yes/no question: what verify="thorough" checks one by one.

The decomposition follows the question-generation step of TIFA and Davidsonian Scene Graphs: each fact
states one thing the image must show (an object, a count, an attribute of one object, a relation
between two, a text to render) and comes with the yes/no question a vision model is asked about it.

Two ways to get them, in order:

1. The server's text model (``[defaults] prompt_rewrite``, local or hosted) is asked for a JSON list
   (:data:`FACTS_SYSTEM`). Its answer is validated as ``list[Fact]``; an answer that does not parse is
   dropped, not repaired.
2. Otherwise, or when no text model is configured, :func:`rule_facts` reads the prompt with word lists
   and patterns (number words, colours and sizes, "left of"/"above"/..., quoted or "says ..." text).
   It handles the short compositional prompts of benchmarks such as GenEval well and long free-form
   prompts poorly.

:attr:`PromptFacts.source` says which was used. Answers are cached per (model, prompt) in a bounded
LRU in this process, so repeated verification of one prompt asks the text model once.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from multimodal_mcp.tools.common import Services, approve_spending, in_thread

FactKind = Literal["object", "count", "attribute", "relation", "text"]

FACTS_SYSTEM = """\
Split an image description into atomic facts that a picture either shows or does not.
Reply with a JSON array only. Each item: {"kind": K, "claim": C, "question": Q, "object": O, \
"count": N, "attribute": A, "relation": R, "other": O2, "text": T}.
K is one of object, count, attribute, relation, text. C is a short statement, Q a yes/no question \
about the image. O is the main object's noun (singular). N is the number of objects, only for \
count. A is a colour, size, material or other property, only for attribute. R is "left of", \
"right of", "above", "below" or another short relation, only for relation, with O2 the other \
object. T is the exact text to be written in the image, only for text. Use null for unused fields.
One fact per object, one per number, one per property, one per relation, one per text.
Example: "two red apples left of a sign that says OPEN" gives
[{"kind": "count", "claim": "there are two apples", "question": "Are there exactly two apples?", \
"object": "apple", "count": 2, "attribute": null, "relation": null, "other": null, "text": null},
{"kind": "attribute", "claim": "the apples are red", "question": "Are the apples red?", \
"object": "apple", "count": null, "attribute": "red", "relation": null, "other": null, "text": null},
{"kind": "relation", "claim": "the apples are left of the sign", "question": "Are the apples to the \
left of the sign?", "object": "apple", "count": null, "attribute": null, "relation": "left of", \
"other": "sign", "text": null},
{"kind": "text", "claim": "the sign says OPEN", "question": "Does the sign say \\"OPEN\\"?", \
"object": "sign", "count": null, "attribute": null, "relation": null, "other": null, "text": "OPEN"}]"""


class Fact(BaseModel):
    """One thing the image must show, and the yes/no question that checks it."""

    kind: FactKind
    claim: str = Field(min_length=1, max_length=300, description="The fact as a statement.")
    question: str = Field(min_length=1, max_length=300, description="A yes/no question checking it.")
    object: str | None = Field(default=None, max_length=100, description="The main object (singular).")
    count: int | None = Field(default=None, ge=0, le=100, description="How many, for kind count.")
    attribute: str | None = Field(default=None, max_length=100, description="For kind attribute.")
    relation: str | None = Field(default=None, max_length=60, description="For kind relation.")
    other: str | None = Field(default=None, max_length=100, description="The relation's other object.")
    text: str | None = Field(default=None, max_length=300, description="For kind text: what it says.")


class PromptFacts(BaseModel):
    """The facts of one prompt and where they came from."""

    facts: list[Fact]
    source: str = Field(description="The text model that wrote them, or 'rules' (the word-list reader).")
    note: str | None = Field(default=None, description="Why the rules were used, when a model was tried.")


_FACT_LIST = TypeAdapter(list[Fact])


class _Lru:
    """A small thread-safe LRU of (model, prompt) -> facts."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], PromptFacts] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> PromptFacts | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def put(self, key: tuple[str, str], value: PromptFacts) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


CACHE = _Lru(256)


async def prompt_facts(services: Services, prompt: str) -> PromptFacts:
    """The facts of ``prompt``: from the text model when one is configured and answers usable JSON,
    else from :func:`rule_facts`. At most ``[server.verification] max_facts``; cached per model and
    prompt. A paid text model is confirmed with the user first (a declined call raises)."""
    settings = services.config.server.verification
    model = services.config.defaults.get("prompt_rewrite")
    key = (model or "rules", prompt)
    cached = CACHE.get(key)
    if cached is not None:
        return cached
    note = None
    found: PromptFacts | None = None
    if model is not None:
        tokens = min(settings.fact_tokens, services.config.server.limits.max_tokens)
        await approve_spending(services, model, f"one chat completion (up to {tokens} tokens) to list facts")
        answer = await services.hub.text_chat(model).complete(FACTS_SYSTEM, prompt, max_tokens=tokens)
        facts = await in_thread(parse_facts, answer.text)
        if facts:
            found = PromptFacts(facts=facts[: settings.max_facts], source=model)
        else:
            note = f"{model} gave no usable fact list"
    if found is None:
        ruled = await in_thread(rule_facts, prompt)
        found = PromptFacts(facts=ruled[: settings.max_facts], source="rules", note=note)
    CACHE.put(key, found)
    return found


def parse_facts(answer: str) -> list[Fact]:
    """The facts in a text model's answer: the first JSON array in it, validated; [] if none parses."""
    start = answer.find("[")
    while start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(answer[start:])
            facts = _FACT_LIST.validate_python(value)
        except (ValueError, ValidationError):
            start = answer.find("[", start + 1)
            continue
        return [fact for fact in facts if _consistent(fact)]
    return []


def _consistent(fact: Fact) -> bool:
    """A fact carries the field its kind needs (a count fact its number, a text fact its text, ...)."""
    needs = {
        "object": fact.object,
        "count": fact.count,
        "attribute": fact.attribute,
        "relation": fact.relation and fact.other,
        "text": fact.text,
    }
    return needs[fact.kind] is not None and needs[fact.kind] != ""


# --- the rule reader ------------------------------------------------------------------------------

NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "a pair of": 2, "a couple of": 2,
}  # fmt: skip
_NUMBER_WORDS = {v: k for k, v in NUMBERS.items() if " " not in k}
ATTRIBUTES = frozenset(
    re.findall(
        r"\w+",
        """red orange yellow green blue purple pink brown black white gray grey silver gold golden
        beige teal cyan magenta turquoise violet navy maroon striped spotted wooden metal metallic
        glass plastic stone small large big tiny huge tall short round square old young""",
    )
)
_RELATIONS: dict[str, str] = {
    "to the left of": "left of", "on the left of": "left of", "left of": "left of",
    "to the right of": "right of", "on the right of": "right of", "right of": "right of",
    "above": "above", "over": "above", "on top of": "above",
    "below": "below", "under": "below", "underneath": "below", "beneath": "below",
    "next to": "next to", "behind": "behind", "in front of": "in front of", "on": "on",
}  # fmt: skip
_RELATION = re.compile(
    r"\s+(?:is\s+|are\s+|sitting\s+|standing\s+|placed\s+)?("
    + "|".join(sorted(map(re.escape, _RELATIONS), key=len, reverse=True))
    + r")\s+"
)
_QUOTED = re.compile(r"\"([^\"]{1,100})\"|“([^”]{1,100})”|(?<![A-Za-z])'([^']{1,100})'(?![A-Za-z])")
_SAYS = re.compile(
    r"\b(?:that\s+)?(?:says|saying|reads|reading|with the (?:words?|text))\s+"
    r"([A-Z0-9][A-Z0-9 !&.,:$%-]*[A-Z0-9!])"
)
_LEAD = re.compile(
    r"^(?:an?\s+)?(?:photo|photograph|picture|image|painting|drawing|illustration|render)\s+of\s+",
    re.IGNORECASE,
)
_SPLIT = re.compile(r"\s*(?:,|;|\band\b|\bwith\b|\bin\b|\bat\b|\bnear\b|\bholding\b)\s*")
_ABOUT_TEXT = frozenset(["text", "word", "words", "letters", "lettering", "caption", "written"])
"""Nouns that name the text itself ("the words 'OPEN'"): a text fact covers them."""
_DETERMINERS = frozenset(["a", "an", "the", "some", "one"])


def _singular(noun: str) -> str:
    for plural, single in (("ies", "y"), ("ves", "f"), ("ches", "ch"), ("shes", "sh"), ("xes", "x")):
        if noun.endswith(plural) and len(noun) > len(plural) + 1:
            return noun[: -len(plural)] + single
    if noun.endswith("s") and not noun.endswith("ss") and len(noun) > 3:
        return noun[:-1]
    return noun


def _plural(noun: str, count: int) -> str:
    if count == 1:
        return noun
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


class _Phrase(BaseModel):
    noun: str
    count: int | None
    attributes: list[str]


def _phrase(text: str) -> _Phrase | None:
    words = [w for w in re.findall(r"[a-z]+|\d+", text.lower())]
    count = None
    lowered = " ".join(words)
    for phrase, value in NUMBERS.items():
        if " " in phrase and lowered.startswith(phrase + " "):
            count, words = value, words[len(phrase.split()) :]
    if words and words[0].isdigit():
        count, words = int(words[0]), words[1:]
    elif words and words[0] in NUMBERS and words[0] != "one":
        count, words = NUMBERS[words[0]], words[1:]
    words = [w for w in words if w not in _DETERMINERS]
    if not words:
        return None
    noun = words[-1]
    if noun in ATTRIBUTES or noun in _ABOUT_TEXT or len(noun) < 2:
        return None
    if count is not None and count > 1:
        noun = _singular(noun)
    return _Phrase(noun=noun, count=count, attributes=[w for w in words[:-1] if w in ATTRIBUTES])


def rule_facts(prompt: str) -> list[Fact]:
    """Facts read from ``prompt`` with word lists and patterns, no model: quoted or "says ..." text,
    number words and digits before a noun (counts), colours, sizes and materials before a noun
    (attributes), "X left of / right of / above / below / next to / on ... Y" (relations), and every
    other noun phrase's head (objects). In the order they appear; duplicates dropped."""
    facts: list[Fact] = []
    rest = prompt
    for match in [*_QUOTED.finditer(prompt), *_SAYS.finditer(prompt)]:
        said = next(group for group in match.groups() if group)
        facts.append(
            Fact(
                kind="text",
                claim=f'the image shows the text "{said}"',
                question=f'Does the image show the text "{said}"?',
                text=said,
            )
        )
        rest = rest.replace(match.group(0), " ")
    rest = _LEAD.sub("", rest.strip().rstrip("."))
    for clause in re.split(r"[.;]\s+", rest):
        facts.extend(_clause_facts(clause))
    return list({fact.claim: fact for fact in facts}.values())


def _clause_facts(clause: str) -> list[Fact]:
    facts: list[Fact] = []
    relation = _RELATION.search(" " + clause + " ")
    pieces = [clause]
    if relation is not None:
        left, right = clause[: relation.start() - 1], clause[relation.end() - 1 :]
        a, b = _phrase(_SPLIT.split(left)[-1]), _phrase(_SPLIT.split(right)[0])
        if a is not None and b is not None:
            name = _RELATIONS[relation.group(1)]
            verb = "are" if (a.count or 1) > 1 else "is"
            subject, other = _plural(a.noun, a.count or 1), _plural(b.noun, b.count or 1)
            facts.append(
                Fact(
                    kind="relation",
                    claim=f"the {subject} {verb} {name} the {other}",
                    question=f"{verb.capitalize()} the {subject} {name} the {other}?",
                    object=a.noun,
                    relation=name,
                    other=b.noun,
                )
            )
        pieces = [left, right]
    phrases = [p for piece in pieces for part in _SPLIT.split(piece) if (p := _phrase(part)) is not None]
    entities = [_entity_facts(p) for p in phrases]
    return [
        *[f for group in entities for f in group if f.kind != "attribute"],
        *facts,
        *[f for group in entities for f in group if f.kind == "attribute"],
    ]


def _entity_facts(phrase: _Phrase) -> list[Fact]:
    noun, count = phrase.noun, phrase.count
    out: list[Fact] = []
    if count is not None and count != 1:
        many = _plural(noun, count)
        said = _NUMBER_WORDS.get(count, str(count))
        out.append(
            Fact(
                kind="count",
                claim=f"there are {said} {many}",
                question=f"Are there exactly {said} {many} in the image?",
                object=noun,
                count=count,
            )
        )
    else:
        article = "an" if noun[0] in "aeiou" else "a"
        out.append(
            Fact(
                kind="object",
                claim=f"there is {article} {noun}",
                question=f"Is there {article} {noun} in the image?",
                object=noun,
            )
        )
    for attribute in phrase.attributes:
        subject = _plural(noun, count or 1)
        verb = "are" if (count or 1) > 1 else "is"
        out.append(
            Fact(
                kind="attribute",
                claim=f"the {subject} {verb} {attribute}",
                question=f"{verb.capitalize()} the {subject} {attribute}?",
                object=noun,
                attribute=attribute,
            )
        )
    return out
