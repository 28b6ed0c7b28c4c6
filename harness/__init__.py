"""What the tests and the benchmarks share (neither imports the other): servers to run against
(a process, or the real app in-process), generated media, and the load, fuzz and soak drivers."""
