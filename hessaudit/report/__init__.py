"""Everything people see: rich tables, progress bars, and the JSON/CSV/markdown/HTML writers.

This package is the only place that imports rich. Library modules hand it plain results.
"""
