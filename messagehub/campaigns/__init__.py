"""Email campaigns: editing, checking, previewing and launching."""
