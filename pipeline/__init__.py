"""The answer pipeline: retrieve -> compress -> generate (with chunk-cache reuse), built from one config."""
