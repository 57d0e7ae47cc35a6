"""Point ``nnUNet_extTrainer`` at this folder (``nnunet-csse trainers-path`` prints it).

It only re-exports trainer classes defined in ``nnunet_csse.training`` and ``nnunet_csse.schedules``: classes
defined in this folder could not be pickled once nnU-Net's lookup removes the modules it imported from here.
"""
