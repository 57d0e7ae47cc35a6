"""The ``nnunet-csse`` command-line tools (``cli.main`` is the entry point and their one error boundary)."""


class StepFailed(RuntimeError):
    """A step a tool runs (e.g. an nnU-Net console script) failed; the message names the step and its log."""
