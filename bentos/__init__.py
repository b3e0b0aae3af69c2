"""BentoML services of the fleet: one template for every model (``bentos/model/``), the
gateway, and the Bento builds."""
