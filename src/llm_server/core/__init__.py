"""Core framework: protocols, types, pipeline, errors, settings and reliability parts."""
