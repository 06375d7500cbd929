"""Scores from sliding reductions (floor L3): the part every engine shares.

An engine supplies sliding reductions (:class:`slidesim.scoring.primitives.Primitives`); this package turns them into
every metric with one set of numerics and one degenerate-window policy: NaN holes, window statistics, round-off
bounds with exact rescoring, the correlation finish, and one driver that streams a bank through in chunks.
"""
