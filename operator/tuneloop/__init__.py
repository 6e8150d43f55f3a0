"""tuneloop: fine-tune, evaluate, register and roll out LLMs on Kubernetes."""

__version__ = "0.1.0"
