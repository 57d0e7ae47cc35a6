"""Benchmarks of nnunet-csse (a developer harness, not part of the installed package): ``python -m benchmarks --help``.

What each part measures and how: docs/benchmarks.md; options and the GPU scripts: benchmarks/README.md.
"""
