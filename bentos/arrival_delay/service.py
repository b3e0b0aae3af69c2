"""The arrival_delay service: `bentoml serve bentos.arrival_delay.service:Service`."""

from bentos.model_service import make_service

Service = make_service("arrival_delay")
