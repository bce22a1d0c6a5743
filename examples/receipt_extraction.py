"""The reference chapter's document-extraction example: read the total and date off a receipt.

The receipt is drawn here with PIL, so we know what it says. A vision-language model answers
"Extract the total amount and date from this receipt."; when the server's describe_image takes a
`response_schema` (a JSON Schema for the answer), the example first asks for JSON and prints the
validated value (a model that cannot comply, like the tiny one, gets an error instead). Then it asks
again with ground=True: every number and quoted string in the answer is checked against what OCR
reads on the receipt, and the ones it does not find are flagged.
Meant for LLaVA 1.6 (llava-hf/llava-v1.6-mistral-7b-hf, model `llava-1.6-mistral-7b`) on a GPU.
On the offline `tiny` profile the VLM has random weights and answers word salad. Either way,
check what matters against the source: VLMs misread text and invent numbers.

    python examples/receipt_extraction.py                    # tiny-vlm
    python examples/receipt_extraction.py --profile default  # llava-1.6-mistral-7b (GPU)
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from _client import call, connect, data_uri, hint, options
from PIL import Image, ImageDraw, ImageFont

PROMPT = "Extract the total amount and date from this receipt."
TOTAL, DATE = "$23.47", "2024-03-15"
LINES = [  # (left, right-aligned)
    ("CORNER CAFE", ""), ("12 Harbour Road", ""), (f"Date: {DATE}", ""), ("", ""),
    ("Flat white", "4.20"), ("Croissant", "3.80"), ("Lunch special", "13.50"), ("Tax", "1.97"), ("", ""),
    ("TOTAL", TOTAL), ("", ""), ("Thank you!", ""),
]  # fmt: skip
RECEIPT_SCHEMA = {
    "type": "object",
    "properties": {"total": {"type": "string"}, "date": {"type": "string"}},
    "required": ["total", "date"],
}


def receipt() -> Image.Image:
    """A till receipt: black text on white, prices right-aligned."""
    font = ImageFont.load_default(size=18)
    image = Image.new("RGB", (300, 40 + 26 * len(LINES)), "white")
    draw = ImageDraw.Draw(image)
    for i, (left, right) in enumerate(LINES):
        draw.text((24, 20 + 26 * i), left, fill="black", font=font)
        draw.text((276, 20 + 26 * i), right, fill="black", font=font, anchor="ra")
    return image


async def main() -> None:
    args = options(__doc__).parse_args()
    image = receipt()
    args.output.mkdir(parents=True, exist_ok=True)
    image.save(args.output / "receipt.png")
    async with connect(args) as client:
        arguments = {"image": data_uri(image), "prompt": PROMPT}
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        answer: dict[str, Any] = {}
        if "response_schema" in tools["describe_image"].input_schema.get("properties", {}):
            # The answer as JSON, checked against the schema: a model that does not comply gets an error.
            schema = {"response_schema": RECEIPT_SCHEMA}
            answer = await call(client, "describe_image", {**arguments, **schema}, may_fail=True)
            if answer:
                print("structured:", json.dumps(answer["data"], indent=2))
        if not answer:
            answer = await call(client, "describe_image", arguments)
        # ground=True checks every number and quoted string of the answer against the receipt's OCR.
        grounded = await call(client, "describe_image", {**arguments, "ground": True})
    print("answer:", answer["text"])
    read = [c for c in (grounded.get("grounding") or {}).get("claims", []) if c["kind"] in ("number", "text")]
    for claim in read:
        verdict = {True: "found", False: "NOT FOUND", None: "unchecked"}[claim["supported"]]
        print(f"OCR check of {claim['claim']!r}: {verdict} ({claim['evidence']})")
    print(f"OCR checked {len(read)} number(s) and quote(s) of the grounded answer")
    print(f"the receipt says: total {TOTAL}, date {DATE} (check the answer against it)")
    hint(args, "llava-hf/llava-v1.6-mistral-7b-hf")


if __name__ == "__main__":
    anyio.run(main)
