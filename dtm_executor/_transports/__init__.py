"""Transports: how frames move between ranks and how worker processes start."""
