"""The aiortc media relay: one peer connection per participant, consent-gated forwarding."""
