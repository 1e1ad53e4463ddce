import os as _os

# TFX 1.16, TFT and TFMA are Keras 2 libraries; TensorFlow 2.16 defaults to
# Keras 3 unless this is set before tf.keras is first touched.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
