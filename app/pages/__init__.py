"""The HTML pages: patient visit, clinician console, scheduler, login."""
