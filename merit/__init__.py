"""Sparse MERIT: noise-robust speech emotion recognition and speech enhancement."""
