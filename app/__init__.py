"""Televisit: self-hostable telemedicine video consultations."""

__version__ = "0.1.0"
