"""The benchmark: test sets, answers, judging and the benchmark run."""
