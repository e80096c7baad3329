"""NumPy reference for ``fastnn.kernels.linear`` (same names, same signatures)."""


def linear_forward(y, x, W, b):
    y[...] = x @ W if b is None else x @ W + b


def linear_backward(dx, dW, db, dy, x, W):
    dW[...] = x.T @ dy
    if db is not None:
        db[...] = dy.sum(axis=0)
    if dx is not None:
        dx[...] = dy @ W.T
