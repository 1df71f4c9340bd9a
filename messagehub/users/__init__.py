"""User administration for admins: add users, change roles, disable accounts and reset passwords."""
