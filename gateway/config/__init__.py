"""Configuration: the frozen model, the TOML reader, the environment default, provider presets, secrets."""
