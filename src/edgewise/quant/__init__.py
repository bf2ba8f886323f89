"""Weight-only integer quantization: the math (int4.py), calibration statistics (calib.py) and the three algorithms."""
