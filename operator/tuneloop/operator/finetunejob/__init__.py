"""FineTuneJob reconciliation: Kopf handlers (thin) over the builders and the status logic."""
