"""Evaluation of what a run trains: masked-LM loss, accuracy and perplexity on held-out data."""
