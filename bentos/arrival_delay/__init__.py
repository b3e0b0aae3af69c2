"""The arrival_delay model service."""
