"""Greedy best-fit packing of whole documents into rows of exactly ``max_seq_len`` token slots.

The packer holds a buffer of pending documents sorted by length. Each row starts with the longest pending
document and is then topped up, again and again, with the longest one that still fits, so short documents fill
the gaps long ones leave. With a few thousand pending documents rows are >99% full. Its whole state is the
buffer, which is plain data, so a checkpoint can save it and a resumed run packs the very same rows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np


@dataclass
class PackedRows:
    documents: list[np.ndarray]
    """The documents of every row, row after row; each row's documents sum to at most max_seq_len."""
    rows: int
    max_seq_len: int
    docs_per_row: list[int]
    """How many of ``documents`` each row holds, so the rows can be split between ranks."""

    @property
    def real_tokens(self) -> int:
        return sum(d.shape[0] for d in self.documents)


class BestFitPacker:
    def __init__(self, max_seq_len: int, buffer_docs: int):
        self.max_seq_len = max_seq_len
        self.buffer_docs = buffer_docs
        self._keys: list[tuple[int, int]] = []  # (length, arrival number), sorted
        self._docs: dict[int, np.ndarray] = {}
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def full(self) -> bool:
        return len(self._keys) >= self.buffer_docs

    def add(self, doc: np.ndarray) -> None:
        """Queue a document; one longer than a row is cut into row-sized pieces (documents are never dropped)."""
        for start in range(0, doc.shape[0], self.max_seq_len):
            piece = doc[start:start + self.max_seq_len]
            bisect.insort(self._keys, (piece.shape[0], self._arrivals))
            self._docs[self._arrivals] = piece
            self._arrivals += 1

    def _take_longest_fitting(self, space: int) -> np.ndarray | None:
        i = bisect.bisect_right(self._keys, (space, float("inf"))) - 1
        if i < 0:
            return None
        _, arrival = self._keys.pop(i)
        return self._docs.pop(arrival)

    def pack(self, rows: int) -> PackedRows:
        """Fill ``rows`` rows from the buffer (fewer only when the buffer runs dry at the end of the data)."""
        documents, docs_per_row = [], []
        while len(docs_per_row) < rows and self._keys:
            space, first = self.max_seq_len, len(documents)
            while (doc := self._take_longest_fitting(space)) is not None:
                documents.append(doc)
                space -= doc.shape[0]
            docs_per_row.append(len(documents) - first)
        return PackedRows(documents=documents, rows=len(docs_per_row), max_seq_len=self.max_seq_len,
                          docs_per_row=docs_per_row)

    def state_dict(self) -> dict:
        order = [arrival for _, arrival in self._keys]
        return {"arrivals": self._arrivals, "order": order, "docs": [self._docs[a] for a in order]}

    def load_state_dict(self, state: dict) -> None:
        self._arrivals = state["arrivals"]
        self._docs = dict(zip(state["order"], (np.asarray(d) for d in state["docs"])))
        self._keys = sorted((doc.shape[0], arrival) for arrival, doc in self._docs.items())
