"""Metrics providers for the Rollout's analysis and drift watch.

`provider` is the provider-neutral seam (`MetricsProvider`, `ProviderError`, what the core asks for);
each backend is one package beside it that implements it (`prometheus/`: its HTTP client and PromQL).
The pure analysis (`rollout.verdicts`, `rollout.drift`) and the reconciler import only `provider`; the
Kopf wiring (`rollout.handlers`) picks the backend.
"""
