"""The application layer: rules versions, instances and events, timers and clocks, facts (above storage)."""
