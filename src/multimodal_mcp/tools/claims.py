"""Checking facts and claims one by one: a vision model's yes/no, a detector's boxes, OCR's text.

What verify="thorough" and describe_image(ground=True) share. Each fact or claim comes back as a
:class:`Claim`, ``{"claim", "kind", "supported", "score", "evidence", "checked_by"}``:

- **object, attribute, other relations**: the default vision model is asked the fact's yes/no
  question. ``score`` is P(yes) from its token probabilities where its capabilities say
  ``yes_probability`` (local transformers VLMs), else 1.0 or 0.0 from its parsed answer;
  supported at ``yes_threshold``.
- **count, and left of / right of / above / below**: with a detector configured (``[defaults]
  detector``), its boxes decide (GenEval's method): the boxes of the object scoring at least
  ``detector_threshold`` are counted, and relations compare the centres of the best box of each
  object. ``score`` is 1.0 or 0.0; the boxes are the evidence. Without a detector the vision model
  is asked instead.
- **text and number**: the image is read with OCR (RapidOCR); the text asked for must match a read
  line with similarity >= ``text_threshold`` (difflib's ratio on case-folded text, ``score``); a
  number must appear among the numbers read (``score`` 1.0 or 0.0).

``supported`` is None when a check could not run (no OCR engine installed, an unparsable answer);
the evidence says why. Thresholds are ``[server.verification]`` settings, starting points until
measured on real models (bench/adherence.py).
"""

from __future__ import annotations

import difflib
import itertools
import re
import time
from collections.abc import Sequence
from typing import Literal

from PIL import Image, ImageDraw
from pydantic import BaseModel, Field

from multimodal_mcp.errors import BackendError
from multimodal_mcp.handles import Detection, TextLine, YesNoJudge
from multimodal_mcp.tools.common import Services, approve_spending
from multimodal_mcp.tools.facts import Fact

ClaimKind = Literal["object", "count", "attribute", "relation", "text", "number"]
SPATIAL = ("left of", "right of", "above", "below")
YES_NO_SUFFIX = " Answer yes or no."


class Claim(BaseModel):
    """One checked fact or claim."""

    claim: str = Field(description="What was checked, as a statement.")
    kind: ClaimKind
    supported: bool | None = Field(
        description="Whether the image supports it; null if it could not be checked."
    )
    score: float | None = Field(description="0-1: P(yes), text similarity, or 1/0 for box and number checks.")
    evidence: str = Field(description="What the check saw: the answer, the boxes, the text read.")
    checked_by: str = Field(description="The model or engine that checked it.")


class FoundBox(BaseModel):
    """A detector box, in pixels of the checked image: [left, top, right, bottom]."""

    label: str
    score: float
    box: list[float]


class Checked(BaseModel):
    """The claims about one image, the boxes found, and seconds per kind of check."""

    claims: list[Claim]
    boxes: list[FoundBox]
    seconds: dict[str, float]


async def check_facts(services: Services, image: Image.Image, facts: Sequence[Fact]) -> Checked:
    """Check each fact against ``image`` (RGB) with the vision model, the detector and OCR as their
    kinds need; claims in the order of ``facts``.

    A paid vision model must have been confirmed first (:func:`approve_questions`).

    Raises:
        BackendError, Busy: a model failed or is at capacity.
    """
    settings = services.config.server.verification
    detector = services.config.defaults.get("detector")
    seconds: dict[str, float] = {}
    claims: dict[int, Claim] = {}
    boxes: list[Detection] = []

    # 1. Counts and positions from the detector's boxes
    boxed = [
        i
        for i, f in enumerate(facts)
        if detector is not None
        and f.object
        and (f.kind == "count" or (f.kind == "relation" and f.relation in SPATIAL and f.other))
    ]
    if boxed and detector is not None:
        labels = sorted({n for i in boxed for n in (facts[i].object, facts[i].other) if n})
        started = time.perf_counter()
        found = await services.hub.object_detector(detector).detect(
            image, [f"a photo of a {label}" for label in labels], settings.detector_threshold
        )
        seconds["detector"] = round(time.perf_counter() - started, 4)
        boxes = [Detection(_label(d.label), d.score, d.box) for d in found]
        for i in boxed:
            claims[i] = _box_claim(facts[i], boxes, detector)

    # 2. Text from OCR
    texts = [i for i, f in enumerate(facts) if f.kind == "text" and f.text]
    if texts:
        started = time.perf_counter()
        lines, problem = await read_text(services, image)
        seconds["ocr"] = round(time.perf_counter() - started, 4)
        for i in texts:
            claims[i] = text_claim(services, facts[i].claim, facts[i].text or "", lines, problem)

    # 3. Everything else: the vision model's yes or no
    asked = [i for i in range(len(facts)) if i not in claims]
    if asked:
        started = time.perf_counter()
        for i, claim in zip(asked, await ask(services, image, [facts[i] for i in asked]), strict=True):
            claims[i] = claim
        seconds["vlm"] = round(time.perf_counter() - started, 4)
    found_boxes = [
        FoundBox(label=d.label, score=round(d.score, 4), box=[round(v, 1) for v in d.box]) for d in boxes
    ]
    return Checked(claims=[claims[i] for i in range(len(facts))], boxes=found_boxes, seconds=seconds)


def _label(query: str) -> str:
    return query.removeprefix("a photo of a ")


async def ask(services: Services, image: Image.Image, facts: Sequence[Fact]) -> list[Claim]:
    """Each fact's question put to the default vision model; P(yes) where it gives one. A paid
    model is confirmed by the caller (:func:`approve_questions`), once for all images."""
    settings = services.config.server.verification
    name = services.hub.pick(None, "vlm", "vlm")
    chat = services.hub.vision_chat(name)
    scorer = chat if isinstance(chat, YesNoJudge) and chat.capabilities.yes_probability else None
    out = []
    for fact in facts:
        question = fact.question.rstrip() + YES_NO_SUFFIX
        if scorer is not None:
            p = round(await scorer.p_yes(image, question), 4)
            out.append(
                Claim(
                    claim=fact.claim,
                    kind=fact.kind,
                    supported=p >= settings.yes_threshold,
                    score=p,
                    evidence=f'P(yes) = {p:.3f} for "{fact.question}"',
                    checked_by=name,
                )
            )
            continue
        answer = (await chat.answer([image], question, max_tokens=8)).text
        said = parse_yes_no(answer)
        out.append(
            Claim(
                claim=fact.claim,
                kind=fact.kind,
                supported=said,
                score=None if said is None else float(said),
                evidence=f'answered "{answer.strip()[:80]}" to "{fact.question}"',
                checked_by=name,
            )
        )
    return out


async def approve_questions(services: Services, images: int, facts: int) -> None:
    """Confirm, before any question, the yes/no answers a paid default vision model may be asked.

    Raises:
        SpendingRefused: declined; nothing was asked.
    """
    name = services.hub.pick(None, "vlm", "vlm")
    await approve_spending(services, name, f"up to {images * facts} yes/no answer(s) about {images} image(s)")


def parse_yes_no(answer: str) -> bool | None:
    """True for an answer starting with yes, False for no; None for anything else."""
    first = re.match(r"\W*(\w+)", answer.lower())
    word = first.group(1) if first else ""
    return (
        True if word in ("yes", "yeah", "yep", "true") else False if word in ("no", "nope", "false") else None
    )


def _centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def _box_claim(fact: Fact, boxes: Sequence[Detection], detector: str) -> Claim:
    mine = [d for d in boxes if d.label == fact.object]
    shown = ", ".join(f"{d.score:.2f}" for d in mine[:8]) or "none"
    if fact.kind == "count":
        supported = len(mine) == fact.count
        evidence = f"{len(mine)} '{fact.object}' box(es) (scores {shown}); asked for {fact.count}"
        return Claim(
            claim=fact.claim,
            kind="count",
            supported=supported,
            score=float(supported),
            evidence=evidence,
            checked_by=detector,
        )
    others = [d for d in boxes if d.label == fact.other]
    if not mine or not others:
        missing = fact.object if not mine else fact.other
        return Claim(
            claim=fact.claim,
            kind="relation",
            supported=False,
            score=0.0,
            evidence=f"no '{missing}' box found",
            checked_by=detector,
        )
    (ax, ay), (bx, by) = _centre(mine[0].box), _centre(others[0].box)
    supported = {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[
        fact.relation or ""
    ]
    return Claim(
        claim=fact.claim,
        kind="relation",
        supported=supported,
        score=float(supported),
        evidence=f"best '{fact.object}' box centre ({ax:.0f}, {ay:.0f}), best '{fact.other}' box centre "
        f"({bx:.0f}, {by:.0f}) (pixels from the top left)",
        checked_by=detector,
    )


def draw_boxes(image: Image.Image, boxes: Sequence[FoundBox]) -> Image.Image:
    """A copy of ``image`` with each box outlined and labelled with its label and score."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    palette = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))
    colours: dict[str, tuple[int, int, int]] = {}
    for found in boxes:
        colour = colours.setdefault(found.label, palette[len(colours) % len(palette)])
        left, top, right, bottom = found.box
        draw.rectangle((left, top, right, bottom), outline=colour, width=max(1, min(out.size) // 100))
        draw.text((left + 2, top + 1), f"{found.label} {found.score:.2f}", fill=colour)
    return out


# --- text -------------------------------------------------------------------------------------------


async def read_text(services: Services, image: Image.Image) -> tuple[list[TextLine], str | None]:
    """The lines OCR reads in ``image`` with at least ``ocr_min_score`` confidence, and None; or no
    lines and the reason when OCR is off or not installed."""
    settings = services.config.server.verification
    if settings.ocr == "off":
        return [], "OCR is off ([server.verification] ocr)"
    try:
        lines = await services.hub.text_reader().read(image)
    except BackendError as exc:
        return [], str(exc)
    return [line for line in lines if line.score >= settings.ocr_min_score], None


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s.,:/$%-]", " ", text.casefold()).split())


def text_similarity(expected: str, lines: Sequence[TextLine]) -> tuple[float, str]:
    """The best similarity (0-1) of ``expected`` to a line read, or to two neighbouring lines
    joined (text that wraps), and that text. Case, repeated spaces and punctuation other than
    . , : / $ % - are ignored; a line containing the text exactly scores 1."""
    want = _normal(expected)
    candidates = [line.text for line in lines]
    candidates += [f"{a.text} {b.text}" for a, b in itertools.pairwise(lines)]
    best, best_text = 0.0, ""
    for text in candidates:
        got = _normal(text)
        ratio = 1.0 if want and want in got else difflib.SequenceMatcher(None, want, got).ratio()
        if ratio > best:
            best, best_text = ratio, text
    return round(best, 4), best_text


def text_claim(
    services: Services, claim: str, expected: str, lines: Sequence[TextLine], problem: str | None
) -> Claim:
    """The claim that ``expected`` is written in the image, checked against the OCR'd ``lines``."""
    if problem is not None:
        return Claim(claim=claim, kind="text", supported=None, score=None, evidence=problem, checked_by="ocr")
    score, seen = text_similarity(expected, lines)
    read = "; ".join(line.text for line in lines[:12]) or "no text"
    evidence = f'closest text read: "{seen}"' if seen else "OCR found no text"
    return Claim(
        claim=claim,
        kind="text",
        supported=score >= services.config.server.verification.text_threshold,
        score=score,
        evidence=f"{evidence} (read: {read})",
        checked_by=services.hub.text_reader().name,
    )


_NUMBER = re.compile(r"(?<![\w.])[-+]?\$?\d[\d,]*(?:\.\d+)?%?")
_QUOTE = re.compile(r"\"([^\"\n]{1,200})\"|“([^”\n]{1,200})”")


def numbers_in(text: str) -> list[str]:
    """The numbers written in ``text`` as canonical strings ("1,234.50" -> "1234.50", "$5" -> "5")."""
    out = []
    for match in _NUMBER.finditer(text):
        raw = match.group(0).strip("+$%").replace(",", "").replace("$", "")
        if raw and any(c.isdigit() for c in raw):
            out.append(raw)
    return out


def _same_number(a: str, b: str) -> bool:
    """Equal as written, or equal in value when either has decimals (42.5 is 42.50); "3" is not
    "03" (a date's month is not a count)."""
    if a == b:
        return True
    if "." not in a and "." not in b:
        return False
    try:
        return abs(float(a) - float(b)) < 1e-9
    except ValueError:
        return False


async def ground_text(services: Services, image: Image.Image, answer: str) -> tuple[list[Claim], float]:
    """Every number and quoted string in ``answer`` checked against the OCR of ``image``: a claim
    each (kinds number and text), and the seconds OCR took. No claims when the answer has neither."""
    numbers = list(dict.fromkeys(numbers_in(answer)))
    quotes = list(dict.fromkeys(next(g for g in m.groups() if g) for m in _QUOTE.finditer(answer)))
    if not numbers and not quotes:
        return [], 0.0
    started = time.perf_counter()
    lines, problem = await read_text(services, image)
    took = round(time.perf_counter() - started, 4)
    claims = [text_claim(services, f'the image shows "{q}"', q, lines, problem) for q in quotes]
    seen = [n for line in lines for n in numbers_in(line.text)]
    for number in numbers:
        if problem is not None:
            claims.append(
                Claim(
                    claim=number,
                    kind="number",
                    supported=None,
                    score=None,
                    evidence=problem,
                    checked_by="ocr",
                )
            )
            continue
        found = any(_same_number(number, other) for other in seen)
        claims.append(
            Claim(
                claim=number,
                kind="number",
                supported=found,
                score=float(found),
                evidence=f"numbers read: {', '.join(dict.fromkeys(seen)) or 'none'}",
                checked_by=services.hub.text_reader().name,
            )
        )
    return claims, took
