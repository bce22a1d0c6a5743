"""The part of a prompt a text encoder's window leaves out, as the caller wrote it.

Decoding the dropped token ids gives tokenizer artefacts (CLIP's BPE: "3 5 mm", "keeper 's"; a cut
inside a word: "ttage"). Instead the cut is located in the original text: with a fast tokenizer
(Hugging Face ``tokenizers``) by its offsets mapping (``return_offsets_mapping=True``: each token's
character span), otherwise by counting the tokens of the text up to each word boundary. A cut
inside a word moves back to the start of that word, which the encoder read in part.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

_WORD_START = re.compile(r"(?<!\S)\S")


class Dropped(NamedTuple):
    """The text from the cut on (a substring of the prompt, surrounding whitespace removed), and
    whether the encoder read the first word of it in part."""

    text: str
    partial: bool


def dropped_text(tokenizer: Any, text: str, room: int) -> Dropped | None:
    """What of ``text`` lies past the first ``room`` tokens of ``tokenizer`` (special tokens not
    counted); None when nothing does."""
    start = _cut_by_offsets(tokenizer, text, room)
    if start is None:
        return _cut_by_words(tokenizer, text, room)
    while start < len(text) and text[start].isspace():  # a token of its own for the space (T5's "▁")
        start += 1
    if start >= len(text):
        return None
    word = start
    while word > 0 and not text[word - 1].isspace():
        word -= 1
    partial = bool(text[start:].strip()) and word < start and bool(text[word:start].strip())
    return Dropped(text[word:].strip(), partial)


def _cut_by_offsets(tokenizer: Any, text: str, room: int) -> int | None:
    """Where the first token past ``room`` starts in ``text``, from a fast tokenizer's offsets;
    None for a tokenizer without offsets, or offsets that are not character spans of ``text``."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = list(encoded["offset_mapping"])
    except (NotImplementedError, TypeError, ValueError, KeyError):
        return None
    if len(offsets) <= room:
        return len(text)
    start = int(offsets[room][0])
    return start if 0 <= start <= len(text) else None


def _cut_by_words(tokenizer: Any, text: str, room: int) -> Dropped | None:
    """The cut at a word boundary, by counting the tokens of ``text`` up to each word's start."""

    def tokens(upto: int) -> int:
        return len(tokenizer(text[:upto], add_special_tokens=False, verbose=False).input_ids)

    if tokens(len(text)) <= room:
        return None
    starts = [m.start() for m in _WORD_START.finditer(text)] + [len(text)]
    # The last word start whose prefix fits the window: the words before it were read whole.
    low, high = 0, len(starts) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if tokens(starts[middle]) <= room:
            low = middle
        else:
            high = middle - 1
    cut = starts[low]
    partial = tokens(cut) < room  # some of the next word's tokens were read
    return Dropped(text[cut:].strip(), partial)
