"""Models out of bertforge: a checkpoint or model as a HuggingFace directory (folder.py) with its model card
(card.py), and the average of several checkpoints (average.py)."""
