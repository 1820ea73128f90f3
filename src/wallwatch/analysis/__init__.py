"""Analysis: per-reply verdicts and per-name attribution, computed in SQL over the store.

The work is done by DuckDB over the store's tables (one vectorised pass per step),
not by a Python loop over replies: see :mod:`wallwatch.analysis.signals` for the
evidence columns, :mod:`wallwatch.analysis.rules` for the rules that turn them into
verdicts, and :mod:`wallwatch.analysis.attribution` for "who did it".
"""
