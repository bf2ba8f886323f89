"""edgewise: quantize, finetune and export language models for on-device inference with ONNX Runtime."""

__version__ = "0.1.0"
