"""A fake Spotler API on loopback for the tests, the demo and the benchmarks: never production."""
