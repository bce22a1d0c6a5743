"""Model backends: the only code (with the pool) that imports torch, diffusers and transformers."""
