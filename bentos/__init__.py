"""BentoML services of the fleet: one per model (``bentos/<model>/``) and the gateway."""
