"""The method's core (docs/method.md): UAFS block, exact receptive fields, the PDCR anchor grid and loss, and
the settings they read. torch and numpy only: nothing here imports nnU-Net, its network library, or the rest
of this package, so the core can be read, tested and reused on its own.
"""
