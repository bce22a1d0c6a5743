"""Text-only chat models (causal LMs with a chat template) through transformers, for prompt rewriting."""

from __future__ import annotations

from typing import Any

from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.backends.hf import TransformersModel, load_pretrained
from multimodal_mcp.config import ModelSpec


class TextModel(TransformersModel):
    """A loaded causal LM and its tokenizer. ``complete`` is blocking; it runs in a pool worker thread.

    Hosted chat models offer the same method as a coroutine, so callers can treat both alike.
    """

    def _chat(self, system: str, prompt: str) -> str:
        tokenizer = self.processor
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        if not getattr(tokenizer, "chat_template", None):
            return f"{system}\n\n{prompt}\n\n"
        try:
            return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        except Exception:
            # Some templates (Gemma's, for one) refuse a system turn: fold it into the user's.
            merged = [{"role": "user", "content": f"{system}\n\n{prompt}"}]
            return str(tokenizer.apply_chat_template(merged, add_generation_prompt=True, tokenize=False))

    def complete(self, system: str, prompt: str, max_tokens: int) -> tuple[str, int]:
        """Greedy completion of one chat turn; returns (text, generated token count)."""
        import torch

        text = self._chat(system, prompt)
        # The chat template already wrote the special tokens it wants (BOS included).
        inputs: Any = self.processor(text, return_tensors="pt", add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        answer = self.processor.decode(new_tokens, skip_special_tokens=True)
        return str(answer).strip(), int(new_tokens.shape[0])


def load_text(name: str, spec: ModelSpec, ctx: LoadContext) -> TextModel:
    model, tokenizer = load_pretrained(name, spec, ctx, "AutoModelForCausalLM")
    return TextModel(name, spec, model, tokenizer, ctx.device)
