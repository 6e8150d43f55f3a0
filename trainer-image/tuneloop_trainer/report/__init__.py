"""The report stage's parts: what it reads from the work directory (`inputs`), numbers → sentences
(`analysis`, `verdict`), the Markdown sections, the figures, and the ModelVersion manifest."""
