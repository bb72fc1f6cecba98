"""The DocRE-II model (paper Sec. 2): an ATLOP-style base module and the iterative inference module.

* `encoder.py`: the pretrained encoder, windowed over long documents (eq. 1);
  `onnx_encoder.py`: the same encoder in ONNX Runtime for prediction.
* `base.py`: the base module: mention, entity and context pooling, pair features, eq. 1-4.
* `inference.py`: the inference module, eq. 5-12, and the test-time iteration.
* `losses.py`: the adaptive-threshold loss (eq. 13) and the contrastive loss (eq. 14).
* `noise.py`: the noise of stage 2 (Sec. 2.3).
* `dropout.py`: fast training dropout masks from numpy's generator (the same rates, cheaper on CPU).
* `plan.py`: the prediction-time form of the inference module (same math, less work).
* `docre_ii.py`: the whole model: configuration, the stage-1/stage-2 losses, prediction,
  safetensors checkpoints.

May import `docre.data`; imported by `docre.training` and everything above it. No Prefect.
"""
