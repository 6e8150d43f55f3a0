"""The output guard: a small OpenAI-compatible pass-through in front of a serving engine (a sidecar of a Rollout's
vLLM pod) that checks every answer against the served ModelVersion's output contract and counts the verdicts for
Prometheus (`tuneloop_guard_answers_total{verdict="ok"|"violation"}`), the input of the built-in canary metric
`contract-violation-rate`. Optionally it enforces the contract on requests that do not ask for a format themselves
(vLLM structured outputs), and checks requests and answers for harmful content (`harmful`: alt-profanity-check's
classifier) and requests for the model's topic (`topic`: a profile of the fine-tune's training prompts), flagging or
refusing what they catch (`tuneloop_guard_checks_total{check, direction, outcome}`: the built-in metrics harmful-rate and
topic-violation-rate). `check` is pure; `proxy` is the aiohttp server (`python -m tuneloop.guard`)."""
