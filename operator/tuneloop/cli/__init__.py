"""`kubectl tuneloop`: the kubectl plugin (installed as the `kubectl-tuneloop` console script)."""
