"""The benchmark suite: `python -m benchmarks` measures the service beside its baseline, in one run.

Not tests: each figure is a median over repeats after warm-up, written as JSON, Markdown and a chart.
"""
