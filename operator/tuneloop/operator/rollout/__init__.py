"""Rollout: vLLM serving builders, traffic split, Prometheus analysis, promotion and rollback.

Layers: ``handlers`` (Kopf registrations, thin) -> ``reconcile`` / ``prometheus`` /
``builders`` / ``analysis`` / ``steps`` (pure or behind Protocols) -> ``tuneloop.api``.
"""
