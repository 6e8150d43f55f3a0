"""FineTuneSchedule: scheduled and triggered retraining, champion/challenger hand-off to a Rollout."""
