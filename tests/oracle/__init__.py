"""Slow, obviously-correct loop implementations of PDCR that the tests and the benchmarks compare the vectorized
loss against: ``pdcr_loops`` (the clean formulation) and ``authors_loops`` (the authors' code, quirk by quirk)."""
