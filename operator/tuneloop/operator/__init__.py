"""The Kopf operator: handlers orchestrate, builders build, analysis decides."""
