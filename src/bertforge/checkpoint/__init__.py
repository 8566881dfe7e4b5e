"""Checkpoints: the run folder's layout and its object-store mirror (run_folder.py), checksum manifests
(manifest.py), loading that unpickles nothing but data (safe_load.py), the ModernBERT research repository's
checkpoints (research.py), and reading any of them into a model (read.py).

train/, eval/, finetune/ and export/ read and write checkpoints through here; this package imports model/ and
data/ and nothing above, and no Composer: a checkpoint is read without a trainer.
"""
