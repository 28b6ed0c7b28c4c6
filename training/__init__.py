"""Synthetic motion clips and the training of the bundled default model (see training/train.py)."""
