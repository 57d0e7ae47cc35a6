"""Presets applied by `nnunet-csse plans apply`."""
