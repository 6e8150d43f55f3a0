"""The train stage's parts: batch layouts, attention and loss kernels, FLOPs/MFU, HF Trainer callbacks,
checkpoints, multi-node launch, the DeepSpeed config, the artifact and lineage, the progress gauges."""
