"""The four stages, one module each, with the `run(ctx) -> summary` that `tuneloop_trainer.STAGES` names.

`python -m tuneloop_trainer <stage>` (the pods) and `tuneloop_trainer.local_runner` (`kubectl tuneloop
local run`) dispatch here; each stage reads and writes the work directory and puts the concern packages
(`dataset`, `training`, `evaluation`, `report`) to work.
"""
