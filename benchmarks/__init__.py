"""Side-by-side benchmarks of agvi against NumPyro, BlackJAX and Pyro: ``python -m benchmarks.run``.

Not part of the installed package: the tasks and settings are those of the project's benchmark
definitions (three NUTS targets, mean-field SVI of a logistic regression, one-gradient floors).
"""
