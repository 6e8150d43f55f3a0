"""Training data (the prepare stage, and the encoding the train stage reuses): reading sources, normalizing
records, token encoding with the chat template, the leak-free split, length statistics.

(Named `dataset`, not `data`: `tuneloop_trainer/data/` holds package data, the default forgetting set.)
"""
