"""The plugin spine: hook specifications, the pluggy manager, and lookups of what plugins registered."""
