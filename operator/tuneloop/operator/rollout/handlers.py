"""Kopf registrations for Rollouts (thin: the logic lives in the sibling modules).

Imported by ``tuneloop.operator.main``; importing this module must always succeed.
"""

from __future__ import annotations
