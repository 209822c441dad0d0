"""The collector: listener, capture reader, decoder, pipeline, sinks and CLI."""
