"""verify="thorough" and describe_image(ground=True)'s text checks, on fake models: which check
decides each kind of fact, what a claim says, what is stored."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from multimodal_mcp.capabilities import Capabilities
from multimodal_mcp.handles import Detection, Handle, TextLine
from multimodal_mcp.tools.claims import numbers_in, parse_yes_no, text_similarity
from multimodal_mcp.tools.common import Services
from multimodal_mcp.tools.describe_image import DescribeImageParams, describe_image
from multimodal_mcp.tools.facts import CACHE
from multimodal_mcp.tools.generate_image import GenerateImageParams, generate_image
from multimodal_mcp.tools.verification import level_of

from fake_hub import (
    DEFAULTS,
    MODELS,
    ONE_IMAGE_VLM,
    FakeEmbedder,
    FakeHub,
    FakeVisionChat,
    fake_config,
    fake_handles,
    fake_services_for,
)
from helpers import data_uri

PROMPT = "a photo of two cats left of a dog, a sign that says OPEN"


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    CACHE.clear()
    yield
    CACHE.clear()


@dataclass
class FakeJudge(FakeVisionChat):
    """A vision model with token probabilities: P(yes) is ``p[word]`` for the first word of
    ``p`` found in the question, else 0.5."""

    p: dict[str, float] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def p_yes(self, image: Image.Image, question: str) -> float:
        self.asked.append(question)
        return next((v for k, v in self.p.items() if k in question), 0.5)


@dataclass
class FakeDetector:
    name: str
    capabilities: Capabilities = field(default_factory=Capabilities)
    found: list[Detection] = field(default_factory=list)
    calls: list[tuple[list[str], float]] = field(default_factory=list)

    async def detect(self, image: Image.Image, labels: Sequence[str], threshold: float) -> list[Detection]:
        self.calls.append((list(labels), threshold))
        return [d for d in self.found if d.label in labels and d.score >= threshold]


@dataclass
class FakeReader:
    lines: list[TextLine]
    name: str = "fake-ocr"
    reads: int = 0

    async def read(self, image: Image.Image) -> list[TextLine]:
        self.reads += 1
        return list(self.lines)


def box(label: str, x: float, score: float = 0.9) -> Detection:
    return Detection(f"a photo of a {label}", score, (x, 10.0, x + 10.0, 30.0))


def services_with(
    tmp_path: Path,
    allowed_root: Path,
    *extra: Handle,
    reader: FakeReader | None = None,
    detector: bool = True,
    paid_vlm: bool = False,
    **server: Any,
) -> Services:
    models = {**MODELS, "fake-owl": {"task": "detector", "backend": "transformers", "source": "fake/owl"}}
    if paid_vlm:
        models["fake-vlm"] = {**MODELS["fake-vlm"], "paid": True}
    defaults = {**DEFAULTS, **({"detector": "fake-owl"} if detector else {})}
    replaced = {h.name for h in extra}
    handles = [h for h in fake_handles() if h.name not in replaced] + list(extra)
    # The prompt itself is a good CLIP match, so only the claims decide whether an image passes.
    handles = [
        FakeEmbedder("fake-clip", cosines={PROMPT: 0.3}) if h.name == "fake-clip" else h for h in handles
    ]
    config = fake_config(tmp_path, allowed_root, models=models, defaults=defaults, **server)
    return fake_services_for(config, handles, reader)


async def thorough(services: Services, prompt: str = PROMPT) -> Any:
    result = await generate_image(GenerateImageParams(prompt=prompt, seed=1, verify="thorough"), services)
    (check,) = result.verification
    return result, check


def by_kind(check: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for claim in check.claims:
        out.setdefault(claim.kind, []).append(claim)
    return out


async def test_each_kind_of_fact_is_checked_by_its_own_model_and_comes_back_as_a_typed_claim(
    tmp_path: Path, allowed_root: Path
) -> None:
    judge = FakeJudge("fake-vlm", Capabilities(images_per_request=1, yes_probability=True), p={"dog": 0.9})
    owl = FakeDetector("fake-owl", found=[box("cat", 5), box("cat", 25), box("dog", 60)])
    reader = FakeReader([TextLine("OPEN", 0.99, (0, 0, 20, 10))])
    services = services_with(tmp_path, allowed_root, judge, owl, reader=reader)

    result, check = await thorough(services)

    assert check.level == "thorough" and check.facts_source.startswith("rules")
    assert [c.claim for c in check.claims] == [f.claim for f in check.facts]
    kinds = by_kind(check)
    (count,) = kinds["count"]
    assert (count.supported, count.score, count.checked_by) == (True, 1.0, "fake-owl")
    assert count.evidence.startswith("2 'cat' box(es)")
    (relation,) = kinds["relation"]
    assert (relation.supported, relation.checked_by) == (True, "fake-owl")  # centres 10 and 30 < 65
    (text,) = kinds["text"]
    assert (text.supported, text.score, text.checked_by) == (True, 1.0, "fake-ocr")
    objects = {c.claim: c for c in kinds["object"]}
    assert objects["there is a dog"].score == 0.9 and objects["there is a dog"].supported
    assert (
        objects["there is a sign"].score == 0.5 and objects["there is a sign"].supported
    )  # at the threshold
    # The detector was asked once, for every object a count or position needs, at the threshold.
    assert owl.calls == [(["a photo of a cat", "a photo of a dog"], 0.2)]
    assert judge.asked == [
        "Is there a dog in the image? Answer yes or no.",
        "Is there a sign in the image? Answer yes or no.",
    ]
    assert check.passed
    assert set(check.seconds) == {"clip", "facts", "detector", "ocr", "vlm"}
    assert all(s >= 0 for s in check.seconds.values())

    # Everything is stored with the image; the boxes are drawn on a stored overlay.
    stored = services.store.record(result.images[0].id).parameters["verification"]
    assert stored == check.model_dump(exclude={"image_id"})
    overlay = services.store.record(check.overlay_id)
    assert overlay.kind == "overlay" and overlay.parameters["boxes"] == [b.model_dump() for b in check.boxes]
    drawn = np.asarray(services.store.open(check.overlay_id).convert("RGB"), dtype=int)
    plain = np.asarray(services.store.open(result.images[0].id).convert("RGB"), dtype=int)
    assert (drawn[10, 5:15] != plain[10, 5:15]).any()  # the first cat box's top edge
    assert (drawn[50:] == plain[50:]).all()  # nothing drawn below the boxes


async def test_a_wrong_count_a_wrong_side_and_missing_text_each_fail_the_image(
    tmp_path: Path, allowed_root: Path
) -> None:
    judge = FakeJudge("fake-vlm", Capabilities(images_per_request=1, yes_probability=True), p={"": 0.9})
    owl = FakeDetector("fake-owl", found=[box("dog", 0), box("cat", 25), box("cat", 40), box("cat", 60, 0.1)])
    reader = FakeReader([TextLine("CLOSED", 0.95, (0, 0, 20, 10)), TextLine("OPFN", 0.3, (0, 20, 20, 30))])
    services = services_with(tmp_path, allowed_root, judge, owl, reader=reader)

    _, check = await thorough(services)

    kinds = by_kind(check)
    assert kinds["count"][0].supported is True  # the third cat box scores under detector_threshold
    assert kinds["relation"][0].supported is False
    assert "best 'cat' box centre (30, 20), best 'dog' box centre (5, 20)" in kinds["relation"][0].evidence
    text = kinds["text"][0]
    # OPFN is read with confidence 0.3 < ocr_min_score, so only CLOSED is compared.
    assert text.supported is False and text.score == round(
        text_similarity("OPEN", [TextLine("CLOSED", 1, (0, 0, 1, 1))])[0], 4
    )
    assert '"CLOSED"' in text.evidence and "OPFN" not in text.evidence
    assert not check.passed


async def test_without_a_detector_counts_and_positions_go_to_the_vision_model(
    tmp_path: Path, allowed_root: Path
) -> None:
    judge = FakeJudge(
        "fake-vlm", Capabilities(images_per_request=1, yes_probability=True), p={"two cats": 0.2, "left": 0.7}
    )
    services = services_with(tmp_path, allowed_root, judge, reader=FakeReader([]), detector=False)
    _, check = await thorough(services)
    kinds = by_kind(check)
    assert (kinds["count"][0].checked_by, kinds["count"][0].score, kinds["count"][0].supported) == (
        "fake-vlm",
        0.2,
        False,
    )
    assert (kinds["relation"][0].checked_by, kinds["relation"][0].score) == ("fake-vlm", 0.7)
    assert check.boxes == [] and check.overlay_id is None


async def test_a_model_without_token_probabilities_is_asked_and_its_answer_parsed(
    tmp_path: Path, allowed_root: Path
) -> None:
    answers = {"dog": "No, there is not.", "sign": "Hmm, hard to say", "cat": "Yes."}

    def reply(call: Any) -> str:
        return next(v for k, v in answers.items() if k in call.prompt)

    vlm = FakeVisionChat("fake-vlm", ONE_IMAGE_VLM, reply=reply)
    services = services_with(tmp_path, allowed_root, vlm, reader=FakeReader([]), detector=False)
    _, check = await thorough(services)
    claims = {c.claim: c for c in check.claims}
    assert (claims["there is a dog"].supported, claims["there is a dog"].score) == (False, 0.0)
    assert (claims["there is a sign"].supported, claims["there is a sign"].score) == (None, None)
    assert (claims["there are two cats"].supported, claims["there are two cats"].score) == (True, 1.0)
    assert 'answered "No, there is not."' in claims["there is a dog"].evidence
    assert all(call.max_tokens == 8 for call in vlm.calls)


async def test_with_ocr_off_text_is_unchecked_and_does_not_fail_the_image(
    tmp_path: Path, allowed_root: Path
) -> None:
    judge = FakeJudge("fake-vlm", Capabilities(images_per_request=1, yes_probability=True), p={"": 0.9})
    reader = FakeReader([TextLine("OPEN", 0.99, (0, 0, 20, 10))])
    services = services_with(
        tmp_path, allowed_root, judge, reader=reader, detector=False, verification={"ocr": "off"}
    )
    _, check = await thorough(services)
    (text,) = by_kind(check)["text"]
    assert (text.supported, text.score) == (None, None)
    assert "[server.verification] ocr" in text.evidence
    assert reader.reads == 0 and check.passed


async def test_verify_true_is_still_the_fast_clip_level(tmp_path: Path, allowed_root: Path) -> None:
    services = services_with(tmp_path, allowed_root, reader=FakeReader([]))
    result = await generate_image(GenerateImageParams(prompt=PROMPT, verify=True), services)
    (check,) = result.verification
    assert (check.level, check.claims, check.facts) == ("fast", None, None)
    assert set(check.seconds) == {"clip"}
    assert [level_of(v) for v in (True, False, None, "fast", "thorough")] == [
        "fast",
        None,
        None,
        "fast",
        "thorough",
    ]


async def test_ground_checks_every_number_and_quoted_string_of_the_answer_against_ocr(
    tmp_path: Path, allowed_root: Path
) -> None:
    answer = 'The receipt from "Corner Bakery" shows a total of $42.50 for 3 items, dated 2024-03-15.'
    vlm = FakeVisionChat("fake-vlm", ONE_IMAGE_VLM, reply=answer)
    lines = [
        TextLine("CORNER BAKERY", 0.98, (0, 0, 50, 10)),
        TextLine("TOTAL 42.50", 0.97, (0, 12, 50, 22)),
        TextLine("2024-03-15", 0.96, (0, 24, 50, 34)),
    ]
    services = services_with(tmp_path, allowed_root, vlm, reader=FakeReader(lines), detector=False)
    params = DescribeImageParams(image=data_uri(Image.new("RGB", (32, 32), "white")), ground=True)

    result = await describe_image(params, services)

    assert result.grounding is not None
    read = {c.claim: c for c in result.grounding.claims if c.kind in ("number", "text")}
    assert read['the image shows "Corner Bakery"'].supported is True
    assert read["42.50"].supported is True  # "$42.50" and "42.50" are one number
    assert read["3"].supported is False  # no 3 was read: possibly made up
    assert read["2024"].supported and read["03"].supported and read["15"].supported
    assert "numbers read: 42.50, 2024, 03, 15" in read["3"].evidence
    assert "NOT in the image's text: '3'" in result.summary()
    assert "ocr" in result.grounding.seconds


def test_text_similarity_ignores_case_and_spacing_and_joins_wrapped_lines() -> None:
    lines = [TextLine("fresh", 0.9, (0, 0, 1, 1)), TextLine("BREAD  daily", 0.9, (0, 2, 1, 3))]
    assert text_similarity("Fresh Bread", lines) == (1.0, "fresh BREAD  daily")
    score, seen = text_similarity("OPEN", [TextLine("OPFN", 0.9, (0, 0, 1, 1))])
    assert seen == "OPFN" and score == 0.75


def test_numbers_are_read_with_currency_signs_and_thousands_separators_dropped() -> None:
    assert numbers_in("Total: $1,234.50, tax 8%, 3 items, v2") == ["1234.50", "8", "3"]


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("Yes.", True),
        ("yes, it is", True),
        ("No", False),
        (" no - there is none", False),
        ("Maybe", None),
        ("", None),
    ],
)
def test_a_yes_no_answer_is_read_from_its_first_word(answer: str, said: bool | None) -> None:
    assert parse_yes_no(answer) is said


async def test_ground_reads_a_real_receipt_with_rapidocr_and_flags_the_made_up_number(
    tmp_path: Path, allowed_root: Path
) -> None:
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=20)
    receipt = Image.new("RGB", (320, 170), "white")
    draw = ImageDraw.Draw(receipt)
    for i, (left, right) in enumerate([("CORNER CAFE", ""), ("Date: 2024-03-15", ""), ("TOTAL", "$23.47")]):
        draw.text((20, 20 + 50 * i), left, fill="black", font=font)
        draw.text((300, 20 + 50 * i), right, fill="black", font=font, anchor="ra")
    answer = 'At "CORNER CAFE" the total was $23.47 for 5 items.'
    vlm = FakeVisionChat("fake-vlm", ONE_IMAGE_VLM, reply=answer)
    services = services_with(tmp_path, allowed_root, vlm, detector=False)  # no reader given: RapidOCR

    result = await describe_image(DescribeImageParams(image=data_uri(receipt), ground=True), services)

    assert result.grounding is not None
    read = {c.claim: c for c in result.grounding.claims if c.kind in ("number", "text")}
    assert set(read) == {'the image shows "CORNER CAFE"', "23.47", "5"}
    assert all(c.checked_by == "rapidocr" for c in read.values())
    assert read['the image shows "CORNER CAFE"'].score == 1.0
    assert read["23.47"].supported is True
    assert read["5"].supported is False
    assert "2024" in read["5"].evidence and "23.47" in read["5"].evidence


async def test_a_paid_vision_model_is_confirmed_once_for_all_images_and_a_decline_asks_nothing(
    tmp_path: Path, allowed_root: Path
) -> None:
    from multimodal_mcp.errors import SpendingRefused
    from multimodal_mcp.tools.common import SpendingRequest, spending_approver

    judge = FakeJudge("fake-vlm", Capabilities(images_per_request=1, yes_probability=True), p={"": 0.9})
    services = services_with(
        tmp_path, allowed_root, judge, reader=FakeReader([]), detector=False, paid_vlm=True
    )
    assert services.hub.paid("fake-vlm")
    asked: list[SpendingRequest] = []

    async def answer(reply: str) -> Any:
        async def approver(request: SpendingRequest) -> str:
            asked.append(request)
            return reply

        return approver

    params = GenerateImageParams(prompt="a photo of a red cup", seed=1, num_images=3, verify="thorough")
    with spending_approver(await answer("decline")), pytest.raises(SpendingRefused):
        await generate_image(params, services)
    assert judge.asked == []
    with spending_approver(await answer("accept")):
        result = await generate_image(params, services)
    assert len(result.verification) == 3 and len(judge.asked) == 3 * 2  # two facts per image
    # One confirmation per call, for every answer of every image.
    assert [r.what for r in asked] == ["up to 6 yes/no answer(s) about 3 image(s)"] * 2


async def test_thorough_without_a_default_vlm_is_refused_before_anything_is_generated(
    tmp_path: Path, allowed_root: Path
) -> None:
    from multimodal_mcp.errors import UnsupportedOperation

    defaults = {k: v for k, v in DEFAULTS.items() if k != "vlm"}
    services = fake_services_for(fake_config(tmp_path, allowed_root, defaults=defaults), fake_handles())
    with pytest.raises(
        UnsupportedOperation,
        match=r"names none in \[defaults\] vlm \(configured vlm models: "
        r"fake-vlm, fake-vlm-multi\); call again with verify='fast'",
    ):
        await generate_image(GenerateImageParams(prompt=PROMPT, verify="thorough"), services)
    hub = services.hub
    assert isinstance(hub, FakeHub) and hub.fakes["fake-sd"].requests == []  # type: ignore[union-attr]
    result = await generate_image(GenerateImageParams(prompt=PROMPT, verify="fast"), services)
    assert result.verification is not None and result.verification[0].level == "fast"


async def test_the_result_text_lists_the_failed_claims_with_their_evidence_and_how_to_restate_them(
    tmp_path: Path, allowed_root: Path
) -> None:
    judge = FakeJudge("fake-vlm", Capabilities(images_per_request=1, yes_probability=True), p={"": 0.9})
    owl = FakeDetector("fake-owl", found=[box("cat", 5), box("dog", 60)])
    services = services_with(tmp_path, allowed_root, judge, owl, reader=FakeReader([]))
    result, check = await thorough(services)
    text = result.summary()
    assert "3 of 5 facts held (facts from rules" in text
    assert "- NOT SHOWN [count] there are two cats: 1 'cat' box(es) (scores 0.90); asked for 2" in text
    assert '- NOT SHOWN [text] the image shows the text "OPEN": OCR found no text' in text
    assert f"Boxes drawn on image://{check.overlay_id}" in text
    assert "a count as 'exactly three apples'" in text
