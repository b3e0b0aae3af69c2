"""The review_sentiment model service."""
