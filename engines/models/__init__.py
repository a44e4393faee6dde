"""Model sources: hub ids, local directories and the offline presets, loaded as `SDXLComponents`."""
