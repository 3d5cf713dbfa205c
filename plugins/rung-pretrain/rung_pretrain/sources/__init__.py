"""Data sources for a pretraining corpus: local files, the Python standard library, HF datasets.

Each source lists its *units* (a file, a range of rows) so that parallel workers can split
them, and reads one unit into documents; what cannot be read is a `Skip`, counted, never a crash.
"""

from rung_pretrain.sources.base import Skip, SourceBase

__all__ = ["Skip", "SourceBase"]
