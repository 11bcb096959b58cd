"""amk.flywheel: what loops leave behind (results.tsv, corpus.jsonl) and the prior learned from it."""

from .corpus import CorpusEntry, append_entry, best_entry, load_corpus
from .prior import Prior
from .results import COLUMNS, ResultRow, Status, append_result, load_results, read_rows

__all__ = ["COLUMNS", "CorpusEntry", "Prior", "ResultRow", "Status", "append_entry", "append_result", "best_entry",
           "load_corpus", "load_results", "read_rows"]
