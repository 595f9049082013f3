"""phasesgd: online SGD of two-layer networks and its order-parameter ODEs."""
