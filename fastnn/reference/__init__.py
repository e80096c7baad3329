"""Pure-NumPy references: same module names, function names and signatures as
``fastnn.kernels``. Tests hold the kernels against these, and these against
finite differences; the ``"numpy"`` backend runs them."""
