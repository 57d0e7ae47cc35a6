"""Re-exports of the nnunet-csse trainers for nnU-Net's external trainer lookup (nnUNet_extTrainer)."""

from nnunet_csse.schedules import (  # noqa: F401
    nnUNetTrainer_benchmark,
    nnUNetTrainerCSSE_benchmark,
    nnUNetTrainerPDCR_benchmark,
    nnUNetTrainerUAFS_benchmark,
)
from nnunet_csse.training import (  # noqa: F401
    nnUNetTrainer_2epochs_10iters,
    nnUNetTrainer_demo,
    nnUNetTrainerCSSE,
    nnUNetTrainerCSSE_2epochs_10iters,
    nnUNetTrainerCSSE_5epochs,
    nnUNetTrainerCSSE_demo,
    nnUNetTrainerCSSE_HPDCR,
    nnUNetTrainerCSSE_HPDCR_2epochs_10iters,
    nnUNetTrainerCSSE_HPDCR_5epochs,
    nnUNetTrainerPDCR,
    nnUNetTrainerPDCR_2epochs_10iters,
    nnUNetTrainerPDCR_5epochs,
    nnUNetTrainerUAFS,
    nnUNetTrainerUAFS_2epochs_10iters,
    nnUNetTrainerUAFS_5epochs,
)
