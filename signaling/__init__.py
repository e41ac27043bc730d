"""WebSocket signaling, the waiting room and the consult queue, fan-out across processes."""
