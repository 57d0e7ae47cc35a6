"""Benchmarks of nnunet-csse (a developer harness, not part of the installed package).

Run ``python -m benchmarks --help``. Modules:

- :mod:`benchmarks.__main__`: the command line (parts A, B, C; ``accuracy``, ``summary``, ``profile``).
- :mod:`benchmarks.plans`: plans, sizes, synthetic batches, nnU-Net trainers built from a plan, timers.
- :mod:`benchmarks.pdcr`: part A, the vectorized :class:`nnunet_csse.method.pdcr.PDCRLoss` against the per-anchor
  loop reference :mod:`tests.oracle.pdcr_loops` (written like the authors' code, same loss value asserted), and
  part C, PDCR forward + backward time vs anchors per sample, patch size and class count.
- :mod:`benchmarks.step`: part B, nnU-Net's real ``train_step`` of ``nnUNetTrainer`` vs the CSSE trainers on one
  plan and one synthetic batch (time and peak memory ratios), and the op-by-op profile.
- :mod:`benchmarks.report`: machine description, targets, printed table, PNG, summary of several runs.
- :mod:`benchmarks.accuracy`: trains real runs and compares their validation Dice.
- :mod:`benchmarks.cuda_checks`, :mod:`benchmarks.uncertainty_time`: the CUDA-only code paths against their
  references; ``nnunet-csse uncertainty`` against ``nnUNetv2_predict``.

``benchmarks/gpu_check.sh`` runs the GPU checks and benchmarks, ``benchmarks/accuracy_gpu.sh`` the accuracy
benchmark on one GPU.
"""
