"""Keras 2 files made loadable by Keras 3: config repairs and TF-op stand-ins."""
