"""The demo's contact sheet: each image with its id, prompt, seed and scores, as escaped, well-formed HTML."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from multimodal_mcp.demo import _html

VOID = {"meta", "img", "br", "hr", "link", "input"}


class SheetParser(HTMLParser):
    """Checks that tags nest and close, and collects image sources and text."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.sources: list[str] = []
        self.text: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> SheetParser:
    parser = SheetParser()
    parser.feed(page)
    parser.close()
    assert parser.open == [], f"unclosed tags: {parser.open}"
    return parser


def text_of(sheet: SheetParser) -> str:
    return " ".join(" ".join(sheet.text).split())


def image(image_id: str, seed: int) -> dict[str, Any]:
    return {"id": image_id, "uri": f"image://{image_id}", "width": 64, "height": 32, "seed": seed}


def generated(image_id: str, prompt: str, seed: int, **extra: Any) -> dict[str, Any]:
    return {
        "images": [image(image_id, seed)],
        "seed": seed,
        "model": "tiny-sd15",
        "parameters": {"prompt": prompt, "width": 64, "height": 32, "steps": 2},
        **extra,
    }


def steps(first_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "first": generated(
            "a" * 16, 'a <script>alert("x")</script> & "quoted" lighthouse', 7, **(first_extra or {})
        ),
        "classification": {
            "model": "tiny-clip",
            "labels": [{"label": "a <b>lighthouse</b>", "score": 0.7}, {"label": "a cat", "score": 0.3}],
        },
        "description": {"model": "tiny-vlm", "text": "</blockquote><img src=x onerror=alert(1)>"},
        "second": generated("b" * 16, "a red lighthouse", 8),
        "comparison": {
            "ssim": 0.5,
            "pixel_difference": 0.25,
            "clip_similarity": 0.9,
            "clip_model": "tiny-clip",
            "changed_regions": [{"x": 16, "y": 8, "width": 32, "height": 16, "area_fraction": 0.25}],
            "diff_image": {"id": "c" * 16, "uri": "image://" + "c" * 16, "width": 64, "height": 32},
            "image_a": {"id": "a" * 16},
            "image_b": {"id": "b" * 16},
            "narrative": "the <lighthouse> turned red",
            "model": "tiny-vlm",
        },
    }


def test_every_image_of_the_chain_is_a_thumbnail_with_its_id_prompt_and_seed() -> None:
    page = _html(steps())
    sheet = parse(page)
    assert sheet.sources == ["a" * 16 + ".png", "b" * 16 + ".png", "c" * 16 + ".png"]
    text = text_of(sheet)
    for image_id in ("a" * 16, "b" * 16, "c" * 16):
        assert image_id in text
    assert 'a <script>alert("x")</script> & "quoted" lighthouse' in text and "a red lighthouse" in text
    assert "difference heat map" in text
    assert (
        "a <b>lighthouse</b>: 0.700" in text
        and "SSIM: 0.500" in text
        and "the <lighthouse> turned red" in text
    )


def test_the_seed_of_each_image_sits_next_to_its_label() -> None:
    page = _html(steps())
    assert "<dt>seed</dt><dd>7</dd>" in page and "<dt>seed</dt><dd>8</dd>" in page


def test_user_text_is_escaped_so_prompts_and_answers_cannot_inject_markup() -> None:
    sheet = parse(_html(steps()))
    assert sheet.scripts == 0
    assert len(sheet.sources) == 3, "the description's <img> stayed text"


def test_changed_regions_are_outlined_over_the_regenerated_image_in_image_a_proportions() -> None:
    assert 'style="left:25.00%;top:25.00%;width:50.00%;height:50.00%"' in _html(steps())


def test_verification_scores_are_shown_when_generate_image_returns_them() -> None:
    check = {
        "image_id": "a" * 16,
        "prompt_score": 0.31,
        "label_scores": {"a lighthouse": 0.8, "dusk": 0.05},
        "missing_labels": ["dusk"],
        "passed": False,
        "prompt_threshold": 0.22,
    }
    plain = parse(_html(steps()))
    sheet = parse(_html(steps({"verification": [check]})))
    text = text_of(sheet)
    assert "verification" not in text_of(plain)
    assert "verification: failed" in text and "prompt (needs 0.22): 0.310" in text
    assert "a lighthouse: 0.800" in text and "dusk: 0.050" in text
    assert "missing: dusk" in text


def test_the_report_says_plainly_when_the_models_have_random_weights_and_what_each_score_means() -> None:
    honest = text_of(parse(_html({**steps(), "random_weights": ["tiny-clip", "tiny-sd15"]})))
    assert "These results come from models with random weights (tiny-clip, tiny-sd15" in honest
    assert "different images score close to 1.000" in honest
    assert "multimodal-mcp demo --profile default" in honest
    real = text_of(parse(_html({**steps(), "random_weights": []})))
    assert "random weights" not in real
    for page in (honest, real):  # what each score means, whatever the models
        assert "the scores sum to 1" in page and "SSIM: structural likeness" in page


def test_a_failed_verification_with_random_weights_is_not_shown_as_an_alarm() -> None:
    check = {"image_id": "a" * 16, "prompt_score": 0.01, "passed": False, "prompt_threshold": 0.22}
    random = _html({**steps({"verification": [check]}), "random_weights": ["tiny-sd15"]})
    real = _html({**steps({"verification": [check]}), "random_weights": []})
    assert '<span class="random">failed</span>' in random and 'class="fail"' not in random
    assert '<span class="fail">failed</span>' in real
