"""Split the decoded text into each token's own characters, so the tokens of a view read back as the text."""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


def decoded_text(tokenizer: Any, ids: list[int]) -> str:
    """Decode exactly, keeping special tokens and the tokenizer's own spacing."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Give each token the characters it adds to the decoded text; a token ending mid-character adds ''."""
    pieces = _stream_pieces(tokenizer, ids)
    if pieces is None or "".join(pieces) != decoded_text(tokenizer, ids):
        pieces = _prefix_pieces(tokenizer, ids)
    return pieces


def _stream_pieces(tokenizer: Any, ids: list[int]) -> list[str] | None:
    """Decode incrementally in linear time with the fast tokenizer's DecodeStream, when there is one."""
    backend = getattr(tokenizer, "_tokenizer", None)
    try:
        from tokenizers.decoders import DecodeStream
    except ImportError:
        return None
    if backend is None:
        return None
    stream = DecodeStream(skip_special_tokens=False)
    return [stream.step(backend, token_id) or "" for token_id in ids]


def _prefix_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """Decode every prefix and keep what each token adds: quadratic, but exact for any tokenizer."""
    pieces: list[str] = []
    emitted = ""
    for end in range(1, len(ids) + 1):
        text = decoded_text(tokenizer, ids[:end])
        if text.endswith(REPLACEMENT) and end < len(ids) or not text.startswith(emitted):
            pieces.append("")
            continue
        pieces.append(text[len(emitted):])
        emitted = text
    if emitted != decoded_text(tokenizer, ids) and pieces:
        pieces[-1] += decoded_text(tokenizer, ids)[len(emitted):]
    return pieces
