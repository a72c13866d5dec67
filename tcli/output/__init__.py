"""Rendering of analysis tables: rich terminal tables and CSV/TSV/JSON/JSONL."""

from .table import Table, visible

__all__ = ["Table", "visible"]
