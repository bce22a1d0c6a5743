"""Backends an outside package adds to multimodal-mcp through the entry-point group
``multimodal_mcp.backends``: ``painter`` (local text to image) and ``echo`` (a hosted VLM)."""
