"""The network (transformers' OneFormer built from the spec), self-contained checkpoints, and pretrained weights."""
