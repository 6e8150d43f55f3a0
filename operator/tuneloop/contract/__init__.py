"""What the operator and the trainer pods agree on — the one seam between the two sides.

Both `tuneloop.operator` (and `tuneloop.cli`) and `tuneloop_trainer` import this package; it imports
neither of them, only `tuneloop.api` (the models) and the standard library (+ pydantic via the API).
A test (tests/unit/api/test_layers.py) keeps it that way.

| module          | what both sides agree on                                                              |
| --------------- | ------------------------------------------------------------------------------------- |
| `layout`        | the work directory's files, the pod mounts, the env variables, where the workdir lives |
| `exits`         | exit codes (42: never retried) and failure reasons                                      |
| `termination`   | the ≤ 4 KiB termination-message fitter; the report block in the evaluation pod's log   |
| `progress`      | the trainer's progress gauges and the FineTuneJob status.progress keys they become      |
| `deepspeed`     | world size, batch divisibility (checked here, once) and the DeepSpeed config            |
| `results`       | a stage's summary (result-<stage>.json, the termination message), typed                |
| `lineage`       | the lineage facts a ModelVersion records, from any of the trainer's summaries           |
| `modelversion`  | the ModelVersion manifest — one builder for the operator and the trainer's report      |
| `names`         | child names, DNS labels and the labels every object carries                            |
| `local`         | how `kubectl tuneloop local run` finds the trainer's runner (an entry point, no import) |
| `datadigest`    | the content digest of a dataset glob (the FineTuneSchedule new-data trigger's digest Job) |
"""
