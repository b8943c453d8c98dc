"""Small built-in models used by examples, tests and benchmarks."""
