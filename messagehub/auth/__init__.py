"""Users, logins and roles."""
