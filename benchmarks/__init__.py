"""Benchmarks of nnunet-csse: PDCR speed, training step time and memory, PDCR scaling.

Run ``python -m benchmarks --help``. Parts:

- :mod:`benchmarks.pdcr_speed`: the vectorized :class:`nnunet_csse.method.pdcr.PDCRLoss` against a per-anchor loop
  reference (:mod:`benchmarks.pdcr_reference`, written like the authors' code), same loss value asserted.
- :mod:`benchmarks.step_time`: nnU-Net's real ``train_step`` of ``nnUNetTrainer`` vs the CSSE trainers on one
  plan and one synthetic batch; time and peak memory ratios.
- :mod:`benchmarks.scaling`: PDCR forward + backward time vs anchors per sample, patch size and class count.

``benchmarks/gpu_check.sh`` runs the GPU variant on a bare machine with carried wheels
(``benchmarks/fetch_gpu_wheels.sh``).
"""
