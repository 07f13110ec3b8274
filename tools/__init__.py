"""Command-line tools: CLI, benchmarks, deployment to boards."""
