"""The Spotler Activate API client and the errors it raises: the only production HTTP."""
