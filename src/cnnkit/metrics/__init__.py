"""Evaluation metrics as pure tensor functions, one file per task (``segmentation``, ...)."""
