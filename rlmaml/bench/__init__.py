"""Speed benchmarks that measure rlmaml against other libraries side by side, in one run."""
