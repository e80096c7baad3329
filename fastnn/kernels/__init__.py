"""Numba kernels, one module per op family; see ``fastnn.reference`` for the
NumPy twins with the same names and signatures."""
