"""The flight_delay service: `bentoml serve bentos.flight_delay.service:Service`."""

from bentos.model_service import make_service

Service = make_service("flight_delay")
