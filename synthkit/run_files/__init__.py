"""A run's files on disk, beneath everything that reads or writes them: checkpoints (written atomically,
checked before a resume) and ``final/`` (the published weights, verified on load)."""
