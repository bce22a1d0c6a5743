from __future__ import annotations

from multimodal_mcp.tools.phrases import noun_phrases


def test_determiners_verbs_and_prepositions_split_a_sentence_into_noun_phrases() -> None:
    text = "The image shows a red car parked next to a tall tree."
    assert noun_phrases(text) == ["red car", "tall tree"]


def test_verbs_after_a_noun_end_the_phrase_but_adjectives_before_it_stay() -> None:
    assert noun_phrases("A man riding a horse on the beach at sunset.") == ["man", "horse", "beach", "sunset"]
    assert noun_phrases("a painted wall and a sleeping cat") == ["painted wall", "sleeping cat"]


def test_nouns_that_look_like_verbs_or_adverbs_are_kept() -> None:
    text = "A wooden ceiling, a tall building, a red bed and a butterfly slowly flying."
    assert noun_phrases(text) == ["wooden ceiling", "tall building", "red bed", "butterfly"]


def test_words_about_the_picture_and_lone_adjectives_are_not_things() -> None:
    text = "In the foreground, two small dogs are playing with a ball. The sky is blue. Left side."
    assert noun_phrases(text) == ["two small dogs", "ball", "sky"]


def test_numbers_open_a_phrase_and_possessives_are_folded() -> None:
    assert noun_phrases("3 apples, the cat's collar") == ["3 apples", "cat collar"]


def test_phrases_are_distinct_lower_case_short_and_limited() -> None:
    nouns = ["cup", "fork", "knife", "plate", "bowl", "spoon"]
    text = "A Dog. a dog! The big old red brick farm house. " + " ".join(f"a {w}." for w in nouns)
    phrases = noun_phrases(text, limit=5)
    assert phrases[:2] == ["dog", "red brick farm house"]  # the last four words
    assert len(phrases) == 5 and all(len(p.split()) <= 4 for p in phrases)


def test_text_without_nouns_gives_nothing() -> None:
    assert noun_phrases("") == []
    assert noun_phrases("It is what it is, and so on.") == []
