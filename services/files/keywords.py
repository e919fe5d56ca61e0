"""BM25 as sparse vectors: the keyword half of hybrid search.

A chunk's sparse vector holds, per word, BM25's saturated term frequency; a query's
holds each of its words' IDF in the store. Their inner product, which Milvus
computes over an inverted index, is the chunk's BM25 score for the query. The IDF
comes from per-store document frequencies the files service keeps itself (per file,
replaced whole when a file finishes, so a redelivered ingestion counts once).

Milvus has BM25 built in, but Milvus Lite scores it per sealed segment: after a few
ingestions a chunk lacking the query's words outscored the one holding them.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass

K1 = 1.2
B = 0.75
# BM25 normalizes a chunk's length by the store's average; chunks are cut to a
# fixed size, so the average is close to the chunk size, in words (word pieces
# are ~1.3 per word).
WORDS_PER_PIECE = 0.75
_WORD = re.compile(r"\w+", re.UNICODE)
# Candidates are searched by the rarest MAX_QUERY_WORDS words of a query, and, in a
# store of PRUNE_FROM chunks or more, only by those in at most RARE_SHARE of them.
MAX_QUERY_WORDS = 12
RARE_SHARE = 0.02
PRUNE_FROM = 1000
# Longer "words" are noise (base64, hashes); they are not counted.
MAX_WORD = 64
# The words nearly every English text has: they carry no signal, and would make
# "how do I ..." match every chunk.
STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    few for from further had has have having he her here hers herself him himself his
    how i if in into is it its itself just me more most my myself no nor not now of off
    on once only or other our ours ourselves out over own same she should so some such
    than that the their theirs them themselves then there these they this those through
    to too under until up very was we were what when where which while who whom why will
    with would you your yours yourself yourselves""".split()
)


def words(text: str) -> list[str]:
    """The text's words as BM25 counts them: lowercased, stop words left out."""
    return [
        word
        for word in _WORD.findall(text.lower())
        if word not in STOP_WORDS and len(word) <= MAX_WORD
    ]


def term_id(word: str) -> int:
    """A stable id for a word in a sparse vector (31 bits; 0 is never a word's)."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest()) % (2**31 - 1) + 1


def chunk_vector(chunk_words: list[str], average_length: float) -> dict[int, float]:
    """The chunk's side of BM25: each word's saturated, length-normalized frequency."""
    counts = Counter(chunk_words)
    norm = K1 * (1 - B + B * len(chunk_words) / max(average_length, 1.0))
    vector = {term_id(word): tf * (K1 + 1) / (tf + norm) for word, tf in counts.items()}
    # Milvus refuses an empty sparse row; a chunk of stop words matches nothing.
    return vector or {0: 1e-9}


@dataclass(frozen=True)
class KeywordQuery:
    """The query's side of BM25: every word's IDF weight (to score candidates), and
    the rarest words alone (to find candidates: each word searched costs a walk over
    a posting list as long as its frequency, and common words find nothing that the
    vector side does not)."""

    weights: dict[int, float]
    retrieve: dict[int, float]


def query_vector(
    query_words: list[str], chunks: int, frequencies: dict[str, int]
) -> KeywordQuery | None:
    """The query's BM25 weights among the store's chunks; None without a word."""
    idf = {}
    for word in set(query_words):
        df = frequencies.get(word, 0)
        idf[word] = (math.log(1 + (chunks - df + 0.5) / (df + 0.5)), df)
    if not idf:
        return None
    rarest = sorted(idf, key=lambda word: idf[word][0], reverse=True)[:MAX_QUERY_WORDS]
    retrieve = {
        term_id(word): idf[word][0]
        for word in rarest
        if chunks < PRUNE_FROM or idf[word][1] <= chunks * RARE_SHARE
    }
    return KeywordQuery({term_id(word): weight for word, (weight, _) in idf.items()}, retrieve)


def average_length(max_tokens: int) -> float:
    return max_tokens * WORDS_PER_PIECE
