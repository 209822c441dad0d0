"""The data contracts of flowtrap: flow records, events and configuration."""
