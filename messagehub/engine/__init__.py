"""The campaign engine: sends a campaign's messages and records each outcome.

This package must not import Flask; see README.md beside it.
"""
