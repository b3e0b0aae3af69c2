"""Any catalog model's service:
``FLEET_MODEL=flight_delay bentoml serve bentos.model.service:Service``.

In a Bento built by ``fleet build``, the model comes from the Bento's own labels.
"""

from bentos.model_service import make_service, served_model

Service = make_service(served_model())
