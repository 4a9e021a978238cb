"""The learning task both sides need: datasets (``data``) and Keras models (``models``).
TensorFlow is imported lazily, only by ``models``."""
