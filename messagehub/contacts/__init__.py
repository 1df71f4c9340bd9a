"""Contact lists: importing them from CSV files."""
