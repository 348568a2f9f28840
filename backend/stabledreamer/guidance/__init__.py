"""Guidance models behind one contract (``base.Guidance``): each predicts noise."""
