"""The built-in demo (``hessaudit demo``) and its model zoo."""
