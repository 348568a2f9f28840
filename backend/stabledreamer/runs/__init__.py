"""A run from config to run folder: the trainer, checkpoints, debug images, and the ``generate``
(text) and ``reconstruct`` (oracle) recipes."""
