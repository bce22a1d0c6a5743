"""Vision-language models (LLaVA, Qwen2-VL, Qwen2.5-VL and relatives) through transformers'
image-text-to-text API."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from PIL import Image

from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.backends.hf import TransformersModel, load_pretrained, model_type
from multimodal_mcp.config import ModelSpec
from multimodal_mcp.errors import BackendError

MULTI_IMAGE = {"qwen2_vl": 4, "qwen2_5_vl": 4}
"""Architectures (config.json ``model_type``) that take several images in one question, natively
(each image its own tokens between vision start and end markers), and how many a question may carry
here: each image costs up to the processor's ``max_pixels`` / 784 tokens of context. Other VLMs
(LLaVA 1.5/1.6) take one."""


def images_per_question(spec: ModelSpec) -> int:
    """Images one question to this VLM may carry (see :data:`MULTI_IMAGE`)."""
    return MULTI_IMAGE.get(model_type(spec), 1)


class VisionLanguageModel(TransformersModel):
    """A loaded VLM and its processor. ``answer`` is blocking; it runs in a pool worker thread."""

    def _prompt(self, question: str, images: int) -> str:
        content = [*({"type": "image"} for _ in range(images)), {"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        if getattr(self.processor, "chat_template", None):
            return str(self.processor.apply_chat_template(messages, add_generation_prompt=True))
        return "<image>\n" * images + question

    def answer(self, images: Sequence[Image.Image], question: str, max_tokens: int) -> tuple[str, int]:
        """Greedy answer to ``question`` about ``images`` (as many as the model's capabilities say);
        returns (text, generated token count)."""
        import torch

        pictures = [self.fit(image) for image in images]
        inputs = self.processor(
            images=pictures[0] if len(pictures) == 1 else pictures,
            text=self._prompt(question, len(pictures)),
            return_tensors="pt",
        )
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        text = self.processor.decode(new_tokens, skip_special_tokens=True)
        return text.strip(), int(new_tokens.shape[0])

    def yes_probability(self, image: Image.Image, question: str) -> float:
        """P("Yes") for a yes/no ``question`` about ``image``, normalised over the two answers.

        Each answer's likelihood is the product of its tokens' probabilities after the prompt
        (teacher forcing), so it works whatever the tokenizer splits "Yes" into; the result is
        ``L(Yes) / (L(Yes) + L(No))``, a float in [0, 1].
        """
        import torch

        inputs = self.processor(images=self.fit(image), text=self._prompt(question, 1), return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        prompt_ids, prompt_mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        # Per-token inputs beside the ids (Qwen2-VL's mm_token_type_ids: 0 for text) grow with them.
        per_token = {k: inputs.pop(k) for k in list(inputs) if inputs[k].shape == prompt_ids.shape}
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        log_likelihoods = []
        for answer in ("Yes", "No"):
            ids = torch.tensor([tokenizer(answer, add_special_tokens=False)["input_ids"]], device=self.device)
            input_ids = torch.cat([prompt_ids, ids], dim=1)
            mask = torch.cat([prompt_mask, torch.ones_like(ids)], dim=1)
            extra = {
                k: torch.cat([v, torch.zeros_like(ids, dtype=v.dtype)], dim=1) for k, v in per_token.items()
            }
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=mask, **inputs, **extra).logits
            start = prompt_ids.shape[1]
            # The logits at position t predict token t + 1.
            steps = torch.log_softmax(logits[0, start - 1 : -1].float(), dim=-1)
            log_likelihoods.append(steps.gather(1, ids[0].unsqueeze(1)).sum())
        return float(torch.softmax(torch.stack(log_likelihoods), dim=0)[0])


def _missing_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is None


def torchvision_install_command() -> str:
    """The pip command for the torchvision release paired with the installed torch, from PyTorch's
    index for its build (CPU or CUDA): torch 2.N pairs with torchvision 0.(N+15), and a plain
    ``pip install torchvision`` installs PyPI's newest CUDA build, replacing a CPU torch."""
    import torch

    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    cuda = torch.version.cuda
    index = "cpu" if cuda is None else "cu" + cuda.replace(".", "")
    paired = f"0.{minor + 15}.*" if major == 2 else "<the release for your torch>"
    return f"pip install 'torchvision=={paired}' --index-url https://download.pytorch.org/whl/{index}"


def load_vlm(name: str, spec: ModelSpec, ctx: LoadContext) -> VisionLanguageModel:
    if model_type(spec) in MULTI_IMAGE and _missing_torchvision():
        # transformers builds the Qwen2-VL processors only with their video processor, which needs it.
        raise BackendError(
            f"model {name!r} ({model_type(spec)}) needs torchvision for its processor: install the "
            f"release paired with your torch ({torchvision_install_command()}; a plain pip install "
            "torchvision may replace your torch), or choose another model"
        )
    model, processor = load_pretrained(name, spec, ctx, "AutoModelForImageTextToText")
    return VisionLanguageModel(name, spec, model, processor, ctx.device)
