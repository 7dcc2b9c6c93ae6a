"""What is built on trained runs: sweeps and their reports, the authors' record and the
comparison with it, calibration, prediction, test reports and the benchmarks' downloads."""
