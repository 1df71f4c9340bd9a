"""Delivery settings: the SMTP server and its connection test."""
