"""multimodal-mcp: an MCP server that gives LLM agents eyes and a paintbrush."""

__version__ = "0.1.0"
