"""mobilevlm-bench: how fast an engine and the node run here, next to baselines measured in the same run.

cli.py      the command line, dispatching to:
engine.py   our engine and the PyTorch fp32 reference, each in its own process
llamacpp.py llama.cpp raced against our engine (--llamacpp)
profile.py  one caption by stage and operator (--profile)
kernels.py  onnxruntime's CPU matrix kernels (--kernels)
node.py     the VLM node under camera load (--node)
common.py   what they share: frames, peak RSS, read bandwidth, synthetic engines, JSON
"""
