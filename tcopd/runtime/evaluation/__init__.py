"""Evaluation: grading answers (math-verify in worker processes), statistics over seeds and
problems, figures."""
