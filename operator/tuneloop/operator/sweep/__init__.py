"""FineTuneSweep: the study (Optuna ask, rebuilt from status), the pure decisions, the reconciler and its Kopf wiring."""
