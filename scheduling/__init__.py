"""Clinicians' availability, slots, appointments, visit links and calendar export."""
