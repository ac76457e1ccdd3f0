"""Data: run-directory I/O (atomic writes, JSONL, parquet), prompt rendering, the prepared-row
format, and the loaders that turn the paper's datasets into prepared rows."""
