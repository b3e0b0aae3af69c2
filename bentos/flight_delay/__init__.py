"""The flight_delay model service."""
