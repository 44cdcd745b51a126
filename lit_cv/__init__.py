"""lit-cv: classic computer-vision training experiments as reproducible Lightning runs."""

from lit_cv.classifier import Classifier

__all__ = ["Classifier"]
__version__ = "0.1.0"
