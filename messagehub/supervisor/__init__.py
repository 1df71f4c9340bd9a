"""Supervisors that run campaigns in processes of their own: systemd units or plain processes.

Nothing here imports Flask.
"""
