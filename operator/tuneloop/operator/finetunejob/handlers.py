"""Kopf registrations for FineTuneJobs (filled in by the lifecycle work)."""

from __future__ import annotations
