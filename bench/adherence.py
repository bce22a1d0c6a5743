"""Prompt adherence: generate_image with verify="thorough" over prompts with machine-checkable
specifications (GenEval's format), and how often the verdicts agree with the specifications.

For each prompt (a line of a GenEval-style JSON-lines file: ``tag``, ``prompt``, ``include``, optional
``exclude``; see bench/data/PROVENANCE.md) the script

1. calls ``generate_image(prompt, seed, verify="thorough")``, in this process on the configured
   server's models (the tool function itself, through the hub and pool as the MCP server runs it);
2. turns the specification into facts directly (each included object, its count, colour and
   position) and checks them on the same image with the same checks
   (:func:`multimodal_mcp.tools.claims.check_facts`): the *specification verdict*, GenEval's own
   criterion with this server's detector, VLM and OCR as the judge;
3. compares: **coverage** (share of the specification's facts that the prompt's facts, listed by the
   text model or the rule reader, also contain: kind and values), **verify pass** (share of images
   verify="thorough" passes), **spec pass** (share whose specification facts all hold: a GenEval-style
   score), and **agreement** (share of images where the verify verdict equals the spec verdict).

On the ``tiny`` profile the models have random weights: the run checks the plumbing (every prompt
generates, lists facts, asks, detects, reads, and is scored) and the timings, and the pass rates are
noise. The coverage column does mean something on tiny: it measures the fact lister (the rule reader,
as the tiny text model writes no usable JSON). With real models (e.g. SDXL, OWLv2, a 7B VLM, a 1.5B+
instruct text model, on a GPU) every column means what it says.

    python bench/adherence.py                                   # tiny profile, the sample set
    python bench/adherence.py --config my.toml --prompts evaluation_metadata.jsonl --limit 100
    python bench/adherence.py --json adherence.json             # also write every claim
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_header, table, temp_dir

SAMPLE = Path(__file__).resolve().parent / "data" / "adherence_sample.jsonl"
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def read_specs(path: Path) -> list[dict[str, Any]]:
    """The prompts of a GenEval-style JSON-lines file; blank lines skipped."""
    specs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        spec = json.loads(line)
        if not isinstance(spec, dict) or "prompt" not in spec or "include" not in spec:
            raise SystemExit(f"{path}:{number}: expected an object with 'prompt' and 'include'")
        specs.append(spec)
    return specs


def spec_facts(spec: dict[str, Any]) -> list[Any]:
    """The facts a specification states: per included object its presence or exact count, its
    colour, and its position relative to another included object."""
    from multimodal_mcp.tools.facts import Fact

    include = spec["include"]
    facts = []
    for item in include:
        name, count = item["class"], int(item.get("count", 1))
        if count == 1:
            claim, question = f"there is a {name}", f"Is there a {name}?"
            facts.append(Fact(kind="object", claim=claim, question=question, object=name))
        else:
            said = NUMBER_WORDS.get(count, str(count))
            facts.append(
                Fact(
                    kind="count",
                    claim=f"there are {said} {name}s",
                    question=f"Are there exactly {said} {name}s?",
                    object=name,
                    count=count,
                )
            )
        if item.get("color"):
            colour = item["color"]
            facts.append(
                Fact(
                    kind="attribute",
                    claim=f"the {name} is {colour}",
                    question=f"Is the {name} {colour}?",
                    object=name,
                    attribute=colour,
                )
            )
        if item.get("position"):
            relation, index = item["position"]
            other = include[int(index)]["class"]
            facts.append(
                Fact(
                    kind="relation",
                    claim=f"the {name} is {relation} the {other}",
                    question=f"Is the {name} {relation} the {other}?",
                    object=name,
                    relation=relation,
                    other=other,
                )
            )
    return facts


def _key(fact: Any) -> tuple[Any, ...]:
    count = fact.count if fact.kind == "count" else None
    return (fact.kind, fact.object, count, fact.attribute, fact.relation, fact.other)


def covered(wanted: list[Any], listed: list[Any]) -> int:
    """How many of ``wanted`` have a fact in ``listed`` of the same kind and values (an object fact
    is also covered by a count fact of the same object, which implies it)."""
    keys = {_key(f) for f in listed}
    counted = {f.object for f in listed if f.kind == "count"}
    return sum(_key(f) in keys or (f.kind == "object" and f.object in counted) for f in wanted)


async def run(args: argparse.Namespace, config: Any) -> list[dict[str, Any]]:
    from multimodal_mcp.server.app import create_services
    from multimodal_mcp.tools.claims import check_facts
    from multimodal_mcp.tools.generate_image import GenerateImageParams, generate_image

    specs = read_specs(args.prompts)[: args.limit]
    services = create_services(config)
    rows = []
    async with services.pool.running():
        for i, spec in enumerate(specs):
            started = time.perf_counter()
            params = GenerateImageParams(prompt=spec["prompt"], seed=args.seed + i, verify="thorough")
            result = await generate_image(params, services)
            (check,) = result.verification or [None]
            if check is None or not result.images:
                print(f"skipped (withheld): {spec['prompt']}", file=sys.stderr)
                continue
            image = services.store.open(result.images[0].id)
            wanted = spec_facts(spec)
            judged = await check_facts(services, image, wanted)
            rows.append(
                {
                    "tag": spec.get("tag", "?"),
                    "prompt": spec["prompt"],
                    "image": result.images[0].uri,
                    "facts_source": check.facts_source,
                    "covered": covered(wanted, check.facts or []),
                    "wanted": len(wanted),
                    "verify_pass": check.passed,
                    "claims_pass": all(c.supported is not False for c in check.claims or []),
                    "spec_pass": all(c.supported is True for c in judged.claims),
                    "seconds": check.seconds,
                    "total_seconds": round(time.perf_counter() - started, 3),
                    "claims": [c.model_dump() for c in check.claims or []],
                    "spec_claims": [c.model_dump() for c in judged.claims],
                }
            )
            print(f"[{i + 1}/{len(specs)}] {spec['prompt']}", file=sys.stderr, flush=True)
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    by_tag: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_tag[row["tag"]].append(row)
    lines = []
    for tag, group in [*sorted(by_tag.items()), ("all", rows)]:
        n = len(group)
        wanted = sum(r["wanted"] for r in group)
        checks: dict[str, list[float]] = defaultdict(list)
        for r in group:
            for name, seconds in r["seconds"].items():
                checks[name].append(seconds)
        lines.append(
            [
                tag,
                n,
                f"{100 * sum(r['covered'] for r in group) / max(wanted, 1):.0f}%",
                f"{100 * sum(r['claims_pass'] for r in group) / n:.0f}%",
                f"{100 * sum(r['spec_pass'] for r in group) / n:.0f}%",
                f"{100 * sum(r['claims_pass'] == r['spec_pass'] for r in group) / n:.0f}%",
                " ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in sorted(checks.items())),
            ]
        )
    headers = ["category", "n", "coverage", "verify pass", "spec pass", "agreement", "mean s per check"]
    return table(headers, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, default=SAMPLE, help="GenEval-style JSON lines")
    parser.add_argument("--config", type=Path, help="server config TOML (default: the tiny profile)")
    parser.add_argument("--limit", type=int, default=None, help="first N prompts only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first prompt (then +1 each)")
    parser.add_argument("--json", type=Path, help="write every row and claim here")
    args = parser.parse_args()

    from multimodal_mcp.config import load_config

    print_header("prompt adherence: verify='thorough' against the prompts' specifications")
    with temp_dir("adherence-") as scratch:
        config = load_config(
            profile=None if args.config else "tiny",
            config_file=args.config,
            cache_dir=scratch / "cache",
            home=Path.home(),
            overrides={"store_dir": scratch / "store"},
        )
        print(f"profile {config.profile}; prompts {args.prompts}\n")
        rows = anyio.run(run, args, config)
    print(report(rows))
    print(
        "\ncoverage: the specification's facts found among the prompt's facts; verify pass: no claim of "
        "the prompt's facts failed; spec pass: every specification fact held (GenEval-style score); "
        "agreement: the two verdicts equal."
    )
    if config.profile == "tiny":
        print("tiny profile: random weights, so the pass rates are noise; coverage and timings are real.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
