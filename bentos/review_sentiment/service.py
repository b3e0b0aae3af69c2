"""The review_sentiment service: `bentoml serve bentos.review_sentiment.service:Service`."""

from bentos.model_service import make_service

Service = make_service("review_sentiment")
