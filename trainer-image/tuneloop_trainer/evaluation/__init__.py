"""The evaluate stage's parts: inputs, generation, scoring (`metrics`, the scorers the API's metric
registry names), per-item scores, trivial baselines, statistics, comparisons and gates.

Everything but `inputs` and `generate` is pure: no model, no file I/O.
"""
