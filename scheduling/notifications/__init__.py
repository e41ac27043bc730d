"""Invitations, notices and reminders to patients, by mail and SMS, from an outbox.

`outbox` writes the jobs in the transaction of the change they announce; `worker` claims and
sends them, each at most once across processes and restarts; `messages` writes them and
`transport` delivers them. docs/design.md ("Notifications") tells why it is built this way.
"""
