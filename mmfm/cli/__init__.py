"""The `mmfm` command."""
