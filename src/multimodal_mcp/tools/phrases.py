"""A small noun-phrase extractor for checking descriptions against images (no NLP model needed).

It is a chunker over word classes guessed from closed word lists, not a parser:

- Text is split into clauses at punctuation, then into words.
- Words from closed classes (determiners, pronouns, prepositions, conjunctions, auxiliaries, common
  verbs and adverbs, numbers are kept) end a phrase; so does a word ending in -ing, -ed or -ly that
  follows the phrase's first word ("a man *riding* a horse", "a car *parked* outside"), since after
  a noun such words are nearly always verbs or adverbs.
- A phrase is a run of at most four remaining words ("red brick house", "two small dogs"); its last
  word is taken as the head noun. Phrases whose head is a word about the picture itself (image,
  background, left, ...), a common adjective (blue, large, ...) or verb-like are dropped, as are
  one-letter words and duplicates.

Limits: with no part-of-speech model, a verb missing from the lists can be read as a noun ("a dog
*chases* a ball" gives "dog chases" unless 'chases' is listed), an unlisted adjective used
predicatively ("the sky is *azure*") comes out as its own phrase, and compound phrases joined by 'of'
("a cup of tea") split into their nouns ("cup", "tea"). That is good enough to list the things a
description names so CLIP can check each; it is not good enough for grammar.
"""

from __future__ import annotations

import re


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_CLAUSE = re.compile(r"[.,;:!?()\[\]{}\"\n]+|\s[-–—]+\s")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+")

_STOP = _words(
    """
    a an the this that these those some any each every either neither another other such no
    all both few many much more most several enough own same
    i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
    one ones oneself itself themselves himself herself something anything nothing everything someone
    anyone everyone nobody somebody there here what which who whom whose where when why how whether
    of in on at by for with without within from to into onto upon over under above below behind
    beside besides between among around about across along through throughout toward towards near
    nearby against beyond during after before since until till via per like unlike off out up down
    inside outside underneath beneath atop amid amidst next than as
    and or but nor so yet if then else because while although though also too very quite rather
    just only even still almost nearly really fairly slightly somewhat perhaps maybe possibly likely
    not never always often sometimes usually
    is are was were be been being am isn't aren't wasn't weren't
    has have had having do does did done doing can could may might must shall should will would
    appears appear appeared seems seem seemed looks look looked shows show showed shown depicts
    depict depicted features feature featured contains contain contained includes include included
    displays display displayed sits sit sat stands stand stood lies lie lay holds hold held wears
    wear wore worn rests rest hangs hang hung covers cover covered fills fill filled surrounds
    surround surrounded creates create created gives give given adds add added suggests suggest
    makes make made takes take taken captures capture captured set placed located positioned
    visible seen possibly overall likely clearly
    """
)

# Words about the picture rather than things in it; a phrase with one of these as its head is dropped.
_META = _words(
    """
    image images picture pictures photo photos photograph photographs scene scenes view views shot
    background backgrounds foreground frame frames left right side sides top bottom center centre
    middle front back corner corners edge edges part parts area areas detail details color colors
    colour colours style styles tone tones shade shades atmosphere mood setting composition lighting
    light artwork illustration rendering painting depiction focus kind kinds type types sort lot
    lots piece pieces way ways
    """
)
# Nouns with a verb-like ending ("a wooden *ceiling*", "a *butterfly*").
_SUFFIX_NOUNS = _words(
    """
    building buildings ceiling ceilings clothing string strings evening morning pudding bedding
    railing railings awning awnings swing swings spring springs icing frosting stuffing siding
    lightning thing things wing wings ring rings king kings sapling seedling earring earrings
    stocking stockings dumpling dumplings wedding ending opening offspring sibling duckling
    family butterfly dragonfly belly lily jelly holly rally ally firefly
    hundred sacred bed beds shed sheds sled
    """
)
# Common adjectives: a phrase ending in one has no noun ("the sky is *blue*").
_ADJECTIVES = _words(
    """
    red orange yellow green blue purple violet pink brown black white gray grey golden silver
    dark bright light pale vivid colorful colourful large big small tiny huge little tall short long
    wide narrow old young new modern ancient beautiful pretty serene calm quiet busy empty full
    clear cloudy sunny rainy snowy soft hard smooth rough round square flat warm cold hot cool
    happy sad visible detailed realistic photorealistic blurry sharp
    """
)
_NUMBERS = _words("two three four five six seven eight nine ten dozen")

MAX_PHRASE_WORDS = 4


def noun_phrases(text: str, *, limit: int = 16) -> list[str]:
    """The distinct noun phrases ``text`` names, in order of first appearance, lower-cased."""
    found: dict[str, None] = {}
    for clause in _CLAUSE.split(text):
        run: list[str] = []
        for raw in _WORD.findall(clause):
            word = raw.lower().strip("'-")
            if word.endswith("'s"):
                word = word[:-2]
            if word.isdigit():
                _keep(run, found)
                run = [word]  # "2 bikes"
            elif not word or word in _STOP or (run and _verb_like(word)):
                _keep(run, found)
                run = []
            else:
                run.append(word)
        _keep(run, found)
        if len(found) >= limit:
            break
    return list(found)[:limit]


def _verb_like(word: str) -> bool:
    """Whether a word right after a noun is probably a verb or an adverb ("riding", "parked", "slowly")."""
    if word in _SUFFIX_NOUNS or len(word) <= 4:
        return False
    if word.endswith("ed"):
        return not word.endswith("eed")  # "speed", "tweed"
    return word.endswith(("ing", "ly"))


def _keep(run: list[str], found: dict[str, None]) -> None:
    words = [w for w in run if len(w) > 1 or w.isdigit()]
    while words and (words[-1] in _NUMBERS or words[-1].isdigit()):
        words.pop()  # "the two" / "of 3": a number is not a head noun
    if not words or words[-1] in _META or words[-1] in _ADJECTIVES or _verb_like(words[-1]):
        return
    words = words[-MAX_PHRASE_WORDS:]
    found.setdefault(" ".join(words), None)
