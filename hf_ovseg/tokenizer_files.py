"""Build the HF CLIP tokenizer files (``vocab.json``, ``merges.txt``) from OpenAI's BPE merges file.

OpenAI and OpenCLIP checkpoints ship no tokenizer; their tokenizer is defined by
``bpe_simple_vocab_16e6.txt.gz``, which the ``open_clip_torch`` wheel carries as data. This module reads
that file (it never imports ``open_clip``, which needs torchvision) and writes the two files that
[`transformers.CLIPTokenizer`] loads, giving the OpenAI token ids.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
from pathlib import Path

BPE_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # OpenAI's vocabulary: 256 bytes x 2 (with "</w>"), the merges, 2 specials


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def find_bpe_file() -> Path:
    """The BPE merges file inside the installed ``open_clip_torch`` distribution (not imported)."""
    try:
        path = Path(importlib.metadata.distribution("open_clip_torch").locate_file(BPE_FILE))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            "the OpenAI BPE merges file was not found: install it with "
            "`pip install --no-deps open_clip_torch` (only its data file is read), "
            "or pass --tokenizer with an HF CLIP folder or repo id"
        )
    return path


def clip_vocab_and_merges(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's token -> id map and its ordered merges, from the gzipped BPE file."""
    lines = gzip.open(bpe_path or find_bpe_file(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_path} is not a CLIP BPE merges file ({NUM_MERGES} merges expected)")
    base = list(bytes_to_unicode().values())
    tokens = base + [token + "</w>" for token in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_clip_tokenizer_files(out_dir: str | Path, bpe_path: str | Path | None = None) -> list[Path]:
    """Write ``vocab.json`` and ``merges.txt`` for [`CLIPTokenizer`] into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges(bpe_path)
    vocab_path, merges_path = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return [vocab_path, merges_path]


def build_clip_tokenizer(bpe_path: str | Path | None = None):
    """A [`CLIPTokenizer`] with OpenAI's ids, built offline from the BPE merges file."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(bpe_path)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
