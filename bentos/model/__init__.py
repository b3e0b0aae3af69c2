"""The one service template every catalog model is served with (see service.py)."""
