"""Quantization on the export side: what each configuration costs (quality.py, llamacpp_quality.py),
the data calibrated ones are calibrated on (calibration.py), and the ways of rounding beyond the
builder's own: layouts (layout.py), GPTQ through Olive (gptq.py), QuaRot's rotation (rotation.py)."""
