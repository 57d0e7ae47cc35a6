"""Re-exports of the nnunet-csse trainers for nnU-Net's external trainer lookup (nnUNet_extTrainer)."""

from nnunet_csse.schedules import (  # noqa: F401
    nnUNetTrainer_2epochs_10iters,
    nnUNetTrainer_benchmark,
    nnUNetTrainer_demo,
    nnUNetTrainerCSSE_2epochs_10iters,
    nnUNetTrainerCSSE_5epochs,
    nnUNetTrainerCSSE_authors_2epochs_10iters,
    nnUNetTrainerCSSE_authors_benchmark,
    nnUNetTrainerCSSE_benchmark,
    nnUNetTrainerCSSE_demo,
    nnUNetTrainerCSSE_HPDCR_2epochs_10iters,
    nnUNetTrainerCSSE_HPDCR_5epochs,
    nnUNetTrainerPDCR_2epochs_10iters,
    nnUNetTrainerPDCR_5epochs,
    nnUNetTrainerPDCR_benchmark,
    nnUNetTrainerUAFS_2epochs_10iters,
    nnUNetTrainerUAFS_5epochs,
    nnUNetTrainerUAFS_benchmark,
)
from nnunet_csse.training import (  # noqa: F401
    nnUNetTrainerCSSE,
    nnUNetTrainerCSSE_authors,
    nnUNetTrainerCSSE_HPDCR,
    nnUNetTrainerPDCR,
    nnUNetTrainerUAFS,
)
