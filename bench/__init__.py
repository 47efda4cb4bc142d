"""``shopseq bench``: every stage of landing -> features on synthetic days of 1M and 10M events, beside a plain
pandas implementation of the same stages and DuckDB's own scan of the landing files; LightGBM training on 1M
ranking rows and scoring for 1M users."""
