.PHONY: test lint format typecheck ci demo clients

test:
	python -m pytest

lint:
	ruff check src tests examples
	ruff format --check src tests examples

format:
	ruff format src tests examples
	ruff check --fix src tests examples

typecheck:
	mypy

demo:
	multimodal-mcp demo

clients:
	npm ci --prefix clients --ignore-scripts
	MMCP_REQUIRE_NODE_CLIENTS=1 python -m pytest tests/clients

ci:
	bash .ci/run
