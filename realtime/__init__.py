"""The live application: sources, pipeline threads, rendering, sinks and telemetry."""
