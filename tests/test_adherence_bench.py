"""bench/adherence.py's reading of GenEval-format specifications (no model runs here)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from multimodal_mcp.tools.facts import rule_facts

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def adherence() -> ModuleType:
    # bench/_common sets offline and OpenMP variables at import; keep them out of the other tests.
    environ = dict(os.environ)
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("adherence", BENCH / "adherence.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))
        os.environ.clear()
        os.environ.update(environ)


def test_a_specification_becomes_presence_count_colour_and_position_facts(adherence: ModuleType) -> None:
    spec = {
        "tag": "position",
        "prompt": "a photo of three red apples above a bowl",
        "include": [
            {"class": "bowl", "count": 1},
            {"class": "apple", "count": 3, "color": "red", "position": ["above", 0]},
        ],
    }
    facts = adherence.spec_facts(spec)
    assert [(f.kind, f.object, f.count, f.attribute, f.relation, f.other) for f in facts] == [
        ("object", "bowl", None, None, None, None),
        ("count", "apple", 3, None, None, None),
        ("attribute", "apple", None, "red", None, None),
        ("relation", "apple", None, None, "above", "bowl"),
    ]
    # The rule reader lists the same four facts from the prompt alone.
    assert adherence.covered(facts, rule_facts(spec["prompt"])) == 4


def test_the_sample_set_is_valid_geneval_format_and_fully_covered_by_the_rule_reader(
    adherence: ModuleType,
) -> None:
    specs = adherence.read_specs(adherence.SAMPLE)
    assert len(specs) == 13
    assert {s["tag"] for s in specs} == {
        "single_object",
        "two_object",
        "counting",
        "colors",
        "position",
        "color_attr",
    }
    for spec in specs:
        wanted = adherence.spec_facts(spec)
        assert adherence.covered(wanted, rule_facts(spec["prompt"])) == len(wanted), spec["prompt"]


def test_a_line_without_a_prompt_is_refused_with_its_line_number(
    adherence: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"prompt": "a cat", "include": []}) + "\n\n" + json.dumps({"include": []}) + "\n"
    )
    with pytest.raises(SystemExit, match=r"bad.jsonl:3: expected an object with 'prompt' and 'include'"):
        adherence.read_specs(path)
