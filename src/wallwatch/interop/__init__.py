"""Other people's data, read into wallwatch records so the same analysis judges it."""
