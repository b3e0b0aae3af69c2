"""The fleet gateway service (see service.py)."""
