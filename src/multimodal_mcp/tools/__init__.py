"""Tool implementations: one module per tool, plain async functions over pydantic params and results."""
