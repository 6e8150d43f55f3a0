"""tuneloop's trainer: the stages the training pods (and `kubectl tuneloop local run`) execute.

    python -m tuneloop_trainer <prepare|train|evaluate|export|report> --spec FILE --workdir DIR

Heavy libraries (torch, transformers, peft, deepspeed) are imported inside the stages only.
"""

__all__ = ["STAGES"]

# stage name -> "module:function"; each function takes a StageContext and returns a JSON-able summary.
STAGES = {
    "prepare": "tuneloop_trainer.stages.prepare:run",
    "train": "tuneloop_trainer.stages.train:run",
    "evaluate": "tuneloop_trainer.stages.evaluate:run",
    "export": "tuneloop_trainer.stages.export:run",
    "report": "tuneloop_trainer.stages.report:run",
}
