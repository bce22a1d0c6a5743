"""A prompt's atomic facts: from the text model's JSON, else from the word-list reader; cached."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from multimodal_mcp.tools.common import Services
from multimodal_mcp.tools.facts import CACHE, FACTS_SYSTEM, Fact, parse_facts, prompt_facts, rule_facts

from fake_hub import DEFAULTS, FakeHub, FakeTextChat, fake_config, fake_handles, fake_services_for


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    CACHE.clear()
    yield
    CACHE.clear()


def _shape(facts: list[Fact]) -> list[tuple[object, ...]]:
    return [(f.kind, f.object, f.count, f.attribute, f.relation, f.other, f.text) for f in facts]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a photo of a bench", [("object", "bench", None, None, None, None, None)]),
        ("a photo of three apples", [("count", "apple", 3, None, None, None, None)]),
        ("a photo of 4 bicycles", [("count", "bicycle", 4, None, None, None, None)]),
        (
            "a photo of a red cup and a blue book",
            [
                ("object", "cup", None, None, None, None, None),
                ("object", "book", None, None, None, None, None),
                ("attribute", "cup", None, "red", None, None, None),
                ("attribute", "book", None, "blue", None, None, None),
            ],
        ),
        (
            "a photo of a dog right of a cat",
            [
                ("object", "dog", None, None, None, None, None),
                ("object", "cat", None, None, None, None, None),
                ("relation", "dog", None, None, "right of", "cat", None),
            ],
        ),
        (
            "a photo of a giraffe below a clock",
            [
                ("object", "giraffe", None, None, None, None, None),
                ("object", "clock", None, None, None, None, None),
                ("relation", "giraffe", None, None, "below", "clock", None),
            ],
        ),
        (
            'a shop window with a sign that says OPEN and the words "FRESH BREAD"',
            [
                ("text", None, None, None, None, None, "FRESH BREAD"),
                ("text", None, None, None, None, None, "OPEN"),
                ("object", "window", None, None, None, None, None),
                ("object", "sign", None, None, None, None, None),
            ],
        ),
    ],
)
def test_the_rule_reader_splits_benchmark_style_prompts_into_one_fact_per_thing(
    prompt: str, expected: list[tuple[object, ...]]
) -> None:
    assert _shape(rule_facts(prompt)) == expected


def test_every_rule_fact_asks_a_yes_no_question_about_its_own_claim() -> None:
    facts = rule_facts("two small dogs above a green car")
    assert [(f.kind, f.claim) for f in facts] == [
        ("count", "there are two dogs"),
        ("object", "there is a car"),
        ("relation", "the dogs are above the car"),
        ("attribute", "the dogs are small"),
        ("attribute", "the car is green"),
    ]
    assert [f.question for f in facts] == [
        "Are there exactly two dogs in the image?",
        "Is there a car in the image?",
        "Are the dogs above the car?",
        "Are the dogs small?",
        "Is the car green?",
    ]


def test_parse_facts_takes_the_first_valid_json_array_and_drops_facts_missing_their_field() -> None:
    good = {
        "kind": "count",
        "claim": "two cats",
        "question": "Are there two cats?",
        "object": "cat",
        "count": 2,
    }
    no_count = {"kind": "count", "claim": "cats", "question": "Are there cats?", "object": "cat"}
    answer = f"Sure! [not json] Here: {json.dumps([good, no_count])} hope that helps"
    (fact,) = parse_facts(answer)
    assert (fact.kind, fact.object, fact.count) == ("count", "cat", 2)
    assert parse_facts("the image has a cat") == []
    assert parse_facts('[{"kind": "colour", "claim": "x", "question": "y"}]') == []


async def test_facts_come_from_the_text_model_when_it_answers_json_and_are_cached(
    tmp_path: Path, allowed_root: Path
) -> None:
    fact = {"kind": "object", "claim": "there is a kite", "question": "Is there a kite?", "object": "kite"}
    writer = FakeTextChat("fake-text", reply=json.dumps([fact]))
    handles = [h for h in fake_handles() if h.name != "fake-text"] + [writer]
    services = fake_services_for(fake_config(tmp_path, allowed_root), handles)

    first = await prompt_facts(services, "a kite over the beach")
    again = await prompt_facts(services, "a kite over the beach")

    assert first.source == "fake-text" and first.note is None
    assert _shape(first.facts) == [("object", "kite", None, None, None, None, None)]
    assert again == first
    assert len(writer.calls) == 1  # the second call was answered from the cache
    system, prompt, max_tokens = writer.calls[0]
    assert (system, prompt) == (FACTS_SYSTEM, "a kite over the beach")
    assert max_tokens == services.config.server.verification.fact_tokens


async def test_an_unusable_answer_falls_back_to_the_rules_and_says_so(fake_services: Services) -> None:
    hub = fake_services.hub
    assert isinstance(hub, FakeHub)
    found = await prompt_facts(fake_services, "a photo of three apples")
    assert found.source == "rules"
    assert found.note == "fake-text gave no usable fact list"
    assert _shape(found.facts) == [("count", "apple", 3, None, None, None, None)]


async def test_without_a_text_model_the_rules_are_used_without_asking(
    tmp_path: Path, allowed_root: Path
) -> None:
    defaults = {k: v for k, v in DEFAULTS.items() if k != "prompt_rewrite"}
    services = fake_services_for(fake_config(tmp_path, allowed_root, defaults=defaults), fake_handles())
    found = await prompt_facts(services, "a photo of a dog left of a cat")
    assert found.source == "rules" and found.note is None
    assert [f.kind for f in found.facts] == ["object", "object", "relation"]


async def test_at_most_max_facts_are_kept(tmp_path: Path, allowed_root: Path) -> None:
    config = fake_config(tmp_path, allowed_root, verification={"max_facts": 2})
    services = fake_services_for(config, fake_handles())
    found = await prompt_facts(services, "a red cup, a blue book, a green lamp and a yellow chair")
    assert len(found.facts) == 2
    assert len(rule_facts("a red cup, a blue book, a green lamp and a yellow chair")) == 8
