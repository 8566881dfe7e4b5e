"""How a run mixes its streams, in tokens: by the streams' ``proportion`` (of samples, as streaming draws them), by
their sizes, or by a sampling temperature over their sizes (``data.temperature``).

A temperature ``T`` gives each stream a share of the tokens proportional to n^(1/T), n its token count. Streaming
draws samples, not tokens, so the share is turned into a sample proportion by each stream's mean sample length
(both from the stats.json `bertforge prep` writes beside every stream): an epoch then holds each stream's tokens in
its share. Standard library only: `bertforge plan` shows the mixture without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bertforge.data.config import DataConfig, StreamConfig
from bertforge.errors import DataError


@dataclass
class StreamShare:
    name: str
    tokens: int
    """Tokens the prepared stream holds."""
    samples: int
    token_share: float
    """Its share of the tokens the run reads."""
    sample_proportion: float
    """Its share of the samples the run draws (what streaming is given)."""


def stream_stats(name: str, stream: StreamConfig) -> dict:
    """A prepared stream's stats.json, read from ``stream.local``: the dataset itself, or, for a stream in an
    object store, the cache its stats.json is fetched into when the loader checks the stream. Never reads the store
    (`bertforge plan` stays offline)."""
    path = Path(stream.local) / "stats.json"
    if not path.is_file():
        fetched = f" (fetched from {stream.remote} when a run checks its streams)" if stream.remote else ""
        raise DataError(f"data.streams.{name}: {path} is missing{fetched}; the mixture is computed from the token "
                        f"counts `bertforge prep` records there, so prepare this source (again)")
    stats = json.loads(path.read_text())
    if not stats.get("tokens") or not stats.get("samples"):
        raise DataError(f"data.streams.{name}: {path} records no tokens; prepare it from inputs that have text, "
                        f"or leave the stream out")
    return stats


def stream_shares(config: DataConfig) -> list[StreamShare]:
    """Each stream's share of the tokens and of the samples the run reads (reads every stream's stats.json)."""
    stats = {name: stream_stats(name, stream) for name, stream in config.streams.items()}
    tokens = {name: int(s["tokens"]) for name, s in stats.items()}
    mean_length = {name: tokens[name] / int(s["samples"]) for name, s in stats.items()}
    if config.temperature is not None:
        weight = {name: n ** (1.0 / config.temperature) for name, n in tokens.items()}
        token_weight = {name: w / sum(weight.values()) for name, w in weight.items()}
        sample_weight = {name: token_weight[name] / mean_length[name] for name in tokens}
    else:  # streaming's own rule: the proportions given (of samples), else every sample once (by size)
        sample_weight = {name: (stream.proportion if stream.proportion is not None else
                                (stream.repeat or 1.0) * int(stats[name]["samples"]))
                         for name, stream in config.streams.items()}
        token_weight = {name: sample_weight[name] * mean_length[name] for name in tokens}
    token_total, sample_total = sum(token_weight.values()), sum(sample_weight.values())
    return [StreamShare(name, tokens[name], int(stats[name]["samples"]), token_weight[name] / token_total,
                        sample_weight[name] / sample_total) for name in config.streams]


def temperature_proportions(config: DataConfig) -> dict[str, float]:
    """The sample proportions a temperature mixture gives streaming; {} for a mixture given by proportions."""
    if config.temperature is None:
        return {}
    return {share.name: share.sample_proportion for share in stream_shares(config)}
