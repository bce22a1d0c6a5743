.PHONY: test lint format typecheck ci demo

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

ci:
	bash .ci/run
