"""An agent's loop: generate with verification, revise the prompt from the failed claims, try again.

Each round calls generate_image(verify="thorough", verify_labels=[...]) and reads the verification:
the CLIP prompt score and labels (the fast level), and the claims, one per fact of the prompt
(objects, counts, colours, positions, text), each with whether it held and what the check saw.
Failed claims are written into the prompt by kind (a count as "exactly N", text in quotes "in large
clear letters", the rest named first) and the seed is kept (same composition, stronger wording);
when every claim held but the CLIP score is low, the guidance is raised and the next seed tried. The
loop stops when an image passes or the budget (rounds, seconds) runs out, then compares the first and
the last image with compare_images.

Meant for the `default` profile (SDXL, OWLv2, LLaVA, CLIP ViT-L/14 on a GPU), where the claims mean
something. On `tiny` (random weights) they are noise: the loop runs until its budget ends, as it must.

    python examples/agent_loop.py                         # tiny offline models
    python examples/agent_loop.py --profile default --rounds 5 --seconds 600
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

SUBJECT = "A lighthouse left of two small boats at sunset, a sign that says KEEP OUT, oil painting"
MUST_SHOW = ["a lighthouse", "rocks", "a sunset"]
MAX_GUIDANCE = 12.0


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A tool's structured result and text, following a job handle if the call ran long."""
    result = await client.call_tool(tool, arguments)
    while True:
        text = " ".join(block.text for block in result.content if block.type == "text")
        if result.is_error or result.structured_content is None:
            raise SystemExit(f"{tool} failed: {text}")
        out = result.structured_content
        if "job" not in out or out.get("result") is not None:
            return out.get("result") or out, text
        if out["job"]["status"] not in ("running", "queued", "done"):
            raise SystemExit(f"{tool} did not finish: {text}")
        result = await client.call_tool("get_job", {"job_id": out["job"]["id"], "wait_seconds": 30})


def from_claims(prompt: str, failed: list[dict[str, Any]]) -> str:
    """``prompt`` with each failed claim said more plainly, by its kind."""
    said = []
    for claim in failed:
        if claim["kind"] == "text":
            text = claim["claim"].split('"')[1] if '"' in claim["claim"] else claim["claim"]
            said.append(f'the text "{text}" in large clear letters')
        elif claim["kind"] == "count":
            said.append(f"exactly {claim['claim'].removeprefix('there are ')}")
        else:
            said.append(claim["claim"].removeprefix("there is ").removeprefix("there are "))
    return f"{', '.join(said)}; {prompt}"


def revise(prompt: str, check: dict[str, Any], seed: int, guidance: float) -> tuple[str, int, float, str]:
    """The next prompt, seed and guidance from a failed check, and why."""
    failed = [c for c in check.get("claims") or [] if c["supported"] is False]
    if failed:
        return (
            from_claims(SUBJECT, failed),
            seed,
            guidance,
            f"restated {len(failed)} failed claim(s), kept the seed",
        )
    missing = [label for label in check["missing_labels"] if label.lower() not in prompt.lower()]
    if missing:
        return f"{', '.join(missing)}, {prompt}", seed, guidance, f"named {missing} first, kept the seed"
    if check["missing_labels"]:  # named already, still not seen: say it more strongly
        emphasis = ", ".join(f"clearly showing {label}" for label in check["missing_labels"])
        stronger = min(MAX_GUIDANCE, guidance + 1.5) if guidance > 0 else guidance
        return f"{prompt}, {emphasis}", seed, stronger, "emphasised the missing labels, raised guidance"
    stronger = min(MAX_GUIDANCE, guidance + 1.5) if guidance > 0 else guidance
    return prompt, seed + 1, stronger, f"low prompt score: guidance {stronger}, next seed"


async def main(profile: str, rounds: int, seconds: float) -> None:
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "multimodal_mcp", "serve", "--profile", profile, "--log-level", "WARNING"],
        env=dict(os.environ),
    )
    started = time.monotonic()
    async with Client(server, read_timeout_seconds=900) as client:
        prompt, seed, guidance = SUBJECT, 7, None
        first = last = None
        for round_number in range(1, rounds + 1):
            arguments: dict[str, Any] = {
                "prompt": prompt,
                "seed": seed,
                "verify": "thorough",
                "verify_labels": MUST_SHOW,
                "delivery": "none",  # this script reads no pixels: text and ids are enough
            }
            if guidance is not None:
                arguments["guidance_scale"] = guidance
            out, _ = await call(client, "generate_image", arguments)
            image = out["images"][0]
            (check,) = out["verification"]
            guidance = out["parameters"]["guidance_scale"]
            first = first or image["uri"]
            last = image["uri"]
            labels = ", ".join(f"{label} {score:.2f}" for label, score in check["label_scores"].items())
            print(
                f"round {round_number}: {image['uri']} seed {seed}, guidance {guidance}: "
                f"prompt score {check['prompt_score']:.3f} (needs {check['prompt_threshold']}), "
                f"labels {labels}, missing {check['missing_labels'] or 'none'} -> "
                f"{'PASSED' if check['passed'] else 'failed'}"
            )
            print(f"  prompt: {prompt}")
            claims = check.get("claims") or []
            held = sum(c["supported"] is True for c in claims)
            print(f"  {held} of {len(claims)} claims held (facts from {check.get('facts_source')})")
            for claim in claims:
                verdict = {True: "held", False: "FAILED", None: "unchecked"}[claim["supported"]]
                seen = f"{claim['checked_by']}: {claim['evidence']}"
                print(f"    [{claim['kind']}] {claim['claim']}: {verdict} ({seen})")
            if check["passed"]:
                break
            if round_number == rounds or time.monotonic() - started > seconds:
                print(f"budget spent ({round_number} rounds, {time.monotonic() - started:.0f} s); stopping")
                break
            prompt, seed, guidance, why = revise(prompt, check, seed, guidance)
            print(f"  revised: {why}")

        assert first is not None and last is not None
        _, text = await call(
            client, "compare_images", {"image_a": first, "image_b": last, "delivery": "none"}
        )
        print(f"first vs last: {text}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny", choices=["tiny", "default"])
    parser.add_argument("--rounds", type=int, default=4, help="most generate_image calls")
    parser.add_argument("--seconds", type=float, default=300, help="stop starting rounds after this long")
    args = parser.parse_args()
    anyio.run(main, args.profile, args.rounds, args.seconds)
