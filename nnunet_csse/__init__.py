"""nnunet-csse: Contrastive and Selective Hidden Embeddings (PDCR + UAFS) for nnU-Net v2.

Liu et al., "Contrastive and Selective Hidden Embeddings for Medical Image Segmentation",
IEEE TMI 41(11):3398-3410, 2022 (arXiv 2201.08779).
"""

__version__ = "0.1.0"
