"""Rollout: canary steps, analysis verdicts, drift watch, promotion and rollback (serving builders: `builders`).

Layers: ``handlers`` (Kopf registrations, thin; picks the metrics provider) -> ``reconcile`` (I/O) ->
``steps`` / ``analysis`` / ``drift`` / ``desired`` / ``traffic`` (pure), ``tuneloop.operator.builders``
(serving, traffic manifests), ``tuneloop.operator.analysis.provider`` (the provider-neutral seam) ->
``tuneloop.api``.
"""
