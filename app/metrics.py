"""Prometheus metrics of this process."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "televisit_http_requests_total", "HTTP requests answered.", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "televisit_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BOOKINGS = Counter("televisit_bookings_total", "Booking attempts by outcome.", ["outcome"])
BOOKING_SECONDS = Histogram(
    "televisit_booking_duration_seconds",
    "Time spent booking a slot, for successful bookings.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
MEDIA_PORTS_EXHAUSTED = Counter(
    "televisit_media_ports_exhausted_total",
    "Peer connections the relay could not open: every port of TELEVISIT_MEDIA_PORTS was in use.",
)
