"""External collaborative-filtering models behind one small interface (:class:`CFModel`)."""

from .base import CFModel, load_cf
from .mf import MatrixFactorization, train_mf

__all__ = ["CFModel", "MatrixFactorization", "load_cf", "train_mf"]
