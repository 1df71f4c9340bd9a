"""Senders that deliver one message each: SMTP and the local outbox.

Nothing here imports Flask: campaign processes load these directly.
"""
