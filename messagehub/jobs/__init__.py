"""Background Jobs: campaign units, their monitor pages and their history."""
