"""How a run mixes its streams, in tokens: by the streams' ``proportion`` (of samples, as streaming draws them), by
their sizes, or by a sampling temperature over their sizes (``data.temperature``).

A temperature ``T`` gives each stream a share of the tokens proportional to n^(1/T), n its token count. Streaming
draws samples, not tokens, so the share is turned into a sample proportion by each stream's mean sample length
(both from the stats.json `bertforge prep` writes beside every stream): an epoch then holds each stream's tokens in
its share. Standard library only: `bertforge plan` shows the mixture without torch.
"""

from __future__ import annotations

import json
import math
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
        # n^(1/T) in log space: at T = 0.01 the powers themselves overflow a float
        log_weight = {name: math.log(n) / config.temperature for name, n in tokens.items()}
        top = max(log_weight.values())
        weight = {name: math.exp(w - top) for name, w in log_weight.items()}
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


def proportions_note(config: DataConfig) -> str | None:
    """One line when the streams' proportions do not sum to 1: streaming divides them by their sum, so a typo
    (0.5/0.3/0.3) would change the mixture without a word; the line gives the shares the run will use."""
    given = {name: s.proportion for name, s in config.streams.items() if s.proportion is not None}
    total = sum(given.values())
    if not given or abs(total - 1.0) <= 1e-6:
        return None
    used = ", ".join(f"{name} {value / total:.3f}" for name, value in given.items())
    return (f"note: data.streams' proportions sum to {total:g}, not 1; they are divided by their sum, so the run "
            f"mixes {used} (make them sum to 1 to silence this)")


def temperature_proportions(config: DataConfig) -> dict[str, float]:
    """The sample proportions a temperature mixture gives streaming; {} for a mixture given by proportions."""
    if config.temperature is None:
        return {}
    return {share.name: share.sample_proportion for share in stream_shares(config)}
