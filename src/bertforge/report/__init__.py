"""`bertforge report`: a run's report card, every checkpoint (and a fresh model of the same config) scored on
held-out MLM and fine-tuned on downstream tasks over seeds (card.py), as a table and a picture (render.py)."""
