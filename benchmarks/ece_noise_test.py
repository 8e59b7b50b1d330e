#!/usr/bin/python3
"""Tests of benchmarks/ece_noise.py (run by ctest as `ece_noise_test`).

Exits 77, which ctest counts as skipped, where Debian's python3-numpy is
not installed (`scripts/setup peers` installs it).
"""
import io
import json
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

try:
    import numpy as np
except ImportError:
    print("ece_noise_test: skipped, numpy is not installed (scripts/setup peers)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ece_noise  # noqa: E402


def one_bin(count, predicted):
    return [{"count": count, "predicted": predicted}]


class CalibratedDraws(unittest.TestCase):
    def test_noise_shrinks_as_one_over_the_root_of_the_rows(self):
        # |mean of n Bernoulli(0.5) - 0.5| has median about 0.337 / sqrt(n).
        for rows in (400, 10000):
            median = float(np.median(ece_noise.calibrated_ece_draws(one_bin(rows, 0.5))))
            self.assertAlmostEqual(median * np.sqrt(rows), 0.337, delta=0.06)

    def test_certain_predictions_draw_no_error(self):
        bins = [{"count": 30, "predicted": 0.0}, {"count": 20, "predicted": 1.0}]
        self.assertEqual(float(np.max(ece_noise.calibrated_ece_draws(bins))), 0.0)

    def test_empty_bins_do_not_count(self):
        with_empty = one_bin(400, 0.3) + [{"count": 0, "predicted": 0.0}]
        np.testing.assert_array_equal(ece_noise.calibrated_ece_draws(with_empty),
                                      ece_noise.calibrated_ece_draws(one_bin(400, 0.3)))

    def test_bins_weigh_by_their_rows(self):
        # A bin of certain predictions dilutes the other's error by its share.
        alone = ece_noise.calibrated_ece_draws(one_bin(100, 0.5))
        diluted = ece_noise.calibrated_ece_draws(one_bin(100, 0.5) + one_bin(300, 1.0))
        np.testing.assert_allclose(diluted, alone / 4)


class Report(unittest.TestCase):
    router = {"ece": 0.2, "reliability": one_bin(500, 0.6)}

    def test_an_ece_far_above_the_noise_is_rarely_reached(self):
        figures = ece_noise.ece_noise(self.router)
        self.assertEqual(figures["ece"], 0.2)
        self.assertLess(figures["calibrated_median"], figures["calibrated_p95"])
        self.assertLess(figures["calibrated_p95"], 0.05)
        self.assertEqual(figures["share_at_or_above"], 0.0)

    def test_an_ece_of_zero_is_always_reached(self):
        figures = ece_noise.ece_noise({**self.router, "ece": 0.0})
        self.assertEqual(figures["share_at_or_above"], 1.0)

    def test_a_report_without_an_ece_has_no_figures(self):
        self.assertIsNone(ece_noise.ece_noise({"ece": None, "reliability": one_bin(5, 0.5)}))
        self.assertIsNone(ece_noise.ece_noise({"ece": 0.1}))

    def test_the_command_reads_eval_reports(self):
        with tempfile.TemporaryDirectory() as folder:
            with_ece = os.path.join(folder, "with.json")
            without = os.path.join(folder, "without.json")
            with open(with_ece, "w", encoding="utf-8") as f:
                json.dump({"router": self.router}, f)
            with open(without, "w", encoding="utf-8") as f:
                json.dump({"router": {"ece": None}}, f)
            out = io.StringIO()
            with redirect_stdout(out):
                self.assertEqual(ece_noise.main([with_ece, without]), 0)
        lines = out.getvalue().splitlines()
        self.assertIn("ECE 0.200", lines[0])
        self.assertIn("0% of draws at or above 0.200", lines[0])
        self.assertEqual(lines[1], f"{without}: no ECE in the report")

    def test_the_command_without_reports_is_a_usage_error(self):
        err = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            self.assertEqual(ece_noise.main([]), 2)
        self.assertIn("usage", err.getvalue())


if __name__ == "__main__":
    unittest.main()
