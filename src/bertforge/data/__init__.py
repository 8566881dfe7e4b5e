"""Data: recipes and readers, tokenizers, preparation to MDS shards, and the packed streaming loader."""
